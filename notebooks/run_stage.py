#!/usr/bin/env python
"""Run one pipeline stage: validate its params.yaml section, execute its notebook with
papermill, and publish what it wrote only if every cell succeeded.

    python notebooks/run_stage.py STAGE notebooks/NN_name.ipynb [--params params.yaml] [--root .]

The notebook receives the section's keys (and those of ``--also`` sections) as papermill
parameters, plus ``results_dir`` and ``data_dir``, which point into a staging folder next to the
repository's results/, ``inputs_dir`` (the published data/ that earlier stages wrote) and
``interactive = False`` (no sliders: each figure is drawn once, ``pluralign.explore``) when it
declares them.  (Their defaults in the notebooks are for a run by hand: outputs under scratch/,
inputs from data/, sliders on.)  A key the notebook does not declare is an error.  On success
each staged file (metrics, figures, plots, data, the executed notebook under results/notebooks/)
replaces its published copy; on any failure nothing is published and a single line says why
(exit code 2 for bad params, 1 for a failing cell, 143 when stopped by SIGTERM).

Params are read exactly as DVC reads them (dvc's own YAML parser: ruamel.yaml, YAML 1.2), so
the notebook runs with the values dvc.lock records: ``T: 0300`` is 300, ``soft: no`` is the
string 'no' (which validation rejects), ``l2: 1e-2`` is 0.01, and a duplicate key is an error.

Replaced outputs are kept when DVC could not bring them back.  ``dvc checkout`` restores the
outputs dvc.lock records from the local cache (.dvc/cache/files/md5/, dvc 3 layout; a directory
out is a ``.dir`` listing there).  A published file this run is about to replace is moved to
``.stage-backup/<stage>-<time>/`` (gitignored and dvcignored, like every ``.stage-*`` folder),
and one line says so, unless it is byte-identical to its replacement or its md5 is the one
dvc.lock records for it with that object present in the cache.  (Moving instead of refusing:
a forced re-run must not need an extra flag, and nothing is ever lost.  Only the default cache
location is looked at; with another one every changed file is backed up, the safe side.)

Staging folders ``.stage-<stage>-<pid>-<random>`` hold a ``pid`` file with the runner's process
id; only their results/ and data/ are published.  SIGTERM is turned into SystemExit, so the
staging folder is removed and the kernel (with anything it started) is stopped; a folder left
by a runner that was SIGKILLed is removed by the next run once its pid is no longer alive.

The stored executed notebook is byte-stable for the same params: papermill's and nbclient's
timestamps and durations are dropped, the injected-parameters cell gets a fixed id, staging and
repository paths become the published locations relative to the notebook's folder (e.g.
``../results``), progress bars keep only their final state without rates or times, and the
notebook's wall-time line (``pluralign.report.Stopwatch``) points to
``results/timings/<stage>.json`` (untracked, gitignored, not a DVC out) where the seconds are
written.  The cells' stdout and stderr stream live to the runner's, wall time included.
"""
from __future__ import annotations

import argparse
import contextlib
import filecmp
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

STAGING_PREFIX = ".stage-"
BACKUP_DIR = ".stage-backup"  # matches `.stage-*/` in .gitignore and .dvcignore
PID_FILE = "pid"
PUBLISHED = ("results", "data")  # the staged trees the notebook writes; nothing else is published
INJECTED_TAG = "injected-parameters"


def fail(msg: str, code: int) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- params, read as DVC reads them

def _dvc_parse_yaml():
    # the parser `dvc repro` uses for params.yaml and dvc.lock (ruamel.yaml, typ="safe", YAML 1.2,
    # duplicate keys rejected), so the notebook gets exactly the values dvc.lock records
    from dvc.utils.serialize import parse_yaml

    return parse_yaml


def _yaml_problem(err: BaseException) -> str:
    """ruamel's error (the cause of dvc's YAMLFileCorruptedError) as 'LINE:COL: problem'."""
    cause = err.__cause__ or err
    mark = getattr(cause, "problem_mark", None) or getattr(cause, "context_mark", None)
    problem = getattr(cause, "problem", None) or getattr(cause, "context", None) or str(cause).splitlines()[0]
    context, context_mark = getattr(cause, "context", None), getattr(cause, "context_mark", None)
    if (context and context_mark is not None and context != problem and "duplicate key" not in problem
            and (mark is None or (context_mark.line, context_mark.column) != (mark.line, mark.column))):
        problem += f" ({context} started at {context_mark.line + 1}:{context_mark.column + 1})"
    where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else " "
    return f"{where}{problem}"


def _decode_utf8(raw: bytes, shown: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        fail(f"{shown}:{line}:{col}: not valid UTF-8 (byte 0x{raw[e.start]:02x})", 2)
    # dvc opens the file in text mode: universal newlines
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_params(path: Path, shown: str) -> dict:
    """The params file as DVC reads it; one `error:` line (exit 2) naming the file otherwise."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        fail(f"{shown} not found under {path.parent}", 2)
    except OSError as e:
        fail(f"{shown} cannot be read: {e.strerror}", 2)
    from dvc.utils.serialize import YAMLFileCorruptedError

    try:
        params = _dvc_parse_yaml()(_decode_utf8(raw, shown), shown)
    except YAMLFileCorruptedError as e:
        fail(f"{shown}:{_yaml_problem(e)}", 2)
    if not isinstance(params, dict):
        fail(f"{shown}: the top level must be a mapping of sections, got a {type(params).__name__}", 2)
    return params


def stage_parameters(params: dict, names: list[str], shown: str) -> dict:
    """The validated sections ``names`` merged into one dict of notebook parameters."""
    from pluralign.checks import ParamError, validate

    section = {}
    for name in names:
        if name not in params:
            fail(f"{shown} has no section '{name}'", 2)
        try:
            values = validate(name, params[name])
        except ParamError as e:
            fail(f"{shown}: {e}", 2)
        clash = sorted(set(values) & set(section))
        if clash:
            fail(f"{shown}: sections {names} both set {clash}", 2)
        section.update(values)
    return section


# ---------------------------------------------------------------- staging folders and signals

def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # not a process id (0 and -1 would address process groups)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _owner_pid(folder: Path) -> int | None:
    try:
        return int((folder / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def remove_stale_staging(root: Path) -> list[str]:
    """Remove staging folders whose runner is gone (killed with SIGKILL, say).  A folder without
    a pid file (being created, or made by an older runner) and the backup folder are kept."""
    removed = []
    for folder in sorted(root.glob(f"{STAGING_PREFIX}*")):
        pid = _owner_pid(folder) if folder.is_dir() and folder.name != BACKUP_DIR else None
        # our own pid on a folder that already exists means a dead runner's pid was reused
        if pid is not None and (pid == os.getpid() or not _pid_alive(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def make_staging(root: Path, stage: str) -> Path:
    stage_dir = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{stage}-{os.getpid()}-", dir=root))
    (stage_dir / PID_FILE).write_text(f"{os.getpid()}\n")
    return stage_dir


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through papermill's and our `finally` blocks


@contextlib.contextmanager
def sigterm_deferred():
    """Hold SIGTERM back while publishing, so a publish is never cut in half."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def stop_children(grace: float = 5.0) -> None:
    """Terminate what is left of the kernel and anything it started (then kill after ``grace``):
    every descendant of this process, which is only ever the notebook's kernel."""
    # psutil comes with ipykernel; jupyter_client starts the kernel in its own session, so it would
    # not get our signals and would only notice a dead parent a while later
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


# ---------------------------------------------------------------- byte-stable executed notebooks

# tqdm's "[elapsed<remaining, rate, postfix]" (or "[elapsed, rate]" without a total)
PROGRESS_TIMES = re.compile(r" ?\[(?:\d+:)?\d\d:\d\d(?:<(?:(?:\d+:)?\d\d:\d\d|\?))?(?:,[^\]\n]*)?\]")
# pluralign.report.Stopwatch's line
WALL_TIME = re.compile(r"^\[(?P<name>[^\]\n]+)\] wall time: (?P<seconds>\d+(?:\.\d+)?) s$", re.M)


def _overwrite(line: str) -> str:
    """A line with carriage returns as a terminal finally shows it: each segment overwrites the
    start of what is there (tqdm pads a shorter bar; leave=False blanks it with spaces)."""
    shown = ""
    for segment in line.split("\r"):
        shown = segment + shown[len(segment):]
    return shown.rstrip()


def _settle_progress(text: str) -> str:
    """Stream text as a terminal would finally show it, without tqdm's times and rates; lines a
    progress bar blanked out are dropped."""
    kept = []
    for piece in re.split(r"(?<=\n)", text):
        body, newline = (piece[:-1], "\n") if piece.endswith("\n") else (piece, "")
        if "\r" in body:
            body = _overwrite(body)
            if not body:
                continue
        kept.append(PROGRESS_TIMES.sub("", body) + newline)
    return "".join(kept)


def _merge_streams(outputs: list) -> list:
    merged = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (out.output_type == "stream" and prev is not None and prev.output_type == "stream"
                and prev.name == out.name):
            prev.text += out.text
        else:
            merged.append(out)
    return merged


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _without_widgets(outputs: list) -> list:
    """Outputs without widget views (the notebook bars of tqdm.auto, which Hugging Face's libraries
    use, where ipywidgets is installed): a view's stored state carries rates and times, and its
    text/plain is the bar's first state, not its last.  A stored notebook holds no widget views or
    state; the progress they showed is not a result."""
    return [o for o in outputs
            if not (o.output_type in ("display_data", "update_display_data") and WIDGET_VIEW in o.get("data", {}))]


def _stable_outputs(outputs: list) -> list:
    settled = []
    for out in _merge_streams(_without_widgets(outputs)):
        if out.output_type == "stream":
            out.text = _settle_progress(out.text)
            if not out.text:
                continue
        settled.append(out)
    return _merge_streams(settled)


def _drop_timings(nb) -> None:
    for meta in [nb.metadata.get("papermill", {}), *(c.metadata.get("papermill", {}) for c in nb.cells)]:
        for key in ("start_time", "end_time", "duration"):
            meta.pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # nbclient's per-cell iopub/shell timestamps


def _point_wall_times(nb, timings_rel: str) -> dict[str, float]:
    """Replace the number in each Stopwatch line by a pointer to the timings file; return them."""
    seconds = {}

    def pointer(m):
        seconds[m["name"]] = float(m["seconds"])
        return f"[{m['name']}] wall time: recorded in {timings_rel} (not stored here so this notebook is byte-stable)"

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                out.text = WALL_TIME.sub(pointer, out.text)
    return seconds


def _path_rewriter(replacements: list[tuple[str, str]]):
    # a whole path only: not /x/root2 for /x/root, nor /y/x/root
    rules = [(re.compile(rf"(?<![\w.-]){re.escape(old)}(?![\w.-])"), new) for old, new in replacements]

    def rewrite(node):
        if isinstance(node, str):
            for rule, new in rules:
                node = rule.sub(lambda _: new, node)
            return node
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        if isinstance(node, dict):
            for key in node:
                node[key] = rewrite(node[key])
        return node

    return rewrite


def normalise_notebook(path: Path, replacements: list[tuple[str, str]], timings_rel: str) -> dict[str, float]:
    """Rewrite the executed notebook at ``path`` so it is the same bytes for the same params;
    returns the wall times its Stopwatch lines reported."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    _drop_timings(nb)
    nb.metadata.pop("widgets", None)  # widget state (see _without_widgets)
    for cell in nb.cells:
        if INJECTED_TAG in cell.metadata.get("tags", []):
            cell.id = INJECTED_TAG  # papermill gives it a random id
        if cell.cell_type == "code":
            cell.outputs = _stable_outputs(cell.outputs)
    seconds = _point_wall_times(nb, timings_rel)
    nbformat.write(_path_rewriter(replacements)(nb), path)
    return seconds


# ---------------------------------------------------------------- publishing, keeping what DVC cannot restore

def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_object(root: Path, md5: str) -> Path | None:
    obj = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return obj if obj.is_file() else None


def checkout_restorable(root: Path, stage: str) -> dict[str, str]:
    """{repo-relative path: md5} of the files ``dvc checkout`` can restore for ``stage``: its outs
    in dvc.lock whose objects are in the local cache, directories expanded through their .dir."""
    lock = root / "dvc.lock"
    try:
        outs = _dvc_parse_yaml()(lock.read_text(encoding="utf-8"), "dvc.lock")["stages"][stage]["outs"]
    except Exception:  # no lock, no such stage, unreadable: nothing counts as restorable (back up)
        return {}
    restorable = {}
    for out in outs:
        path, md5 = out.get("path"), out.get("md5")
        if not isinstance(path, str) or not isinstance(md5, str) or _cache_object(root, md5) is None:
            continue
        if md5.endswith(".dir"):
            restorable.update(_dir_listing(root, path, md5))
        else:
            restorable[path] = md5
    return restorable


def _dir_listing(root: Path, path: str, md5: str) -> dict[str, str]:
    """The cached files of a directory out, from its .dir object: [{"md5": ..., "relpath": ...}]."""
    try:
        entries = json.loads(_cache_object(root, md5).read_text())
        return {f"{path.rstrip('/')}/{e['relpath']}": e["md5"] for e in entries
                if _cache_object(root, e["md5"]) is not None}
    except (OSError, ValueError, KeyError, TypeError):  # unreadable: treat as not restorable
        return {}


def _would_lose(published: Path, staged: Path, restorable_md5: str | None) -> bool:
    if not published.is_file() or filecmp.cmp(published, staged, shallow=False):
        return False
    return _md5(published) != restorable_md5


def _new_backup_dir(root: Path, stage: str) -> Path:
    base = root / BACKUP_DIR / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1000):
        folder = base.with_name(base.name + (f"-{n}" if n else ""))
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot make a backup folder next to {base}")


def publish(stage_dir: Path, root: Path, stage: str) -> tuple[Path | None, int]:
    """Move every staged file over its published copy (same filesystem, so each move is atomic);
    a published file DVC could not restore goes to a backup folder first.
    Returns (backup folder or None, number of files backed up)."""
    staged = sorted(p for tree in PUBLISHED for p in (stage_dir / tree).rglob("*") if p.is_file())
    restorable = checkout_restorable(root, stage)
    backup, kept = None, 0
    for src in staged:
        rel = src.relative_to(stage_dir)
        dst = root / rel
        if _would_lose(dst, src, restorable.get(rel.as_posix())):
            backup = backup or _new_backup_dir(root, stage)
            (backup / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(dst, backup / rel)
            kept += 1
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    return backup, kept


def write_timings(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- the stage

def _execute(notebook: Path, out_nb: Path, parameters: dict, stage: str) -> float:
    """Run the notebook with papermill; returns the seconds it took."""
    import papermill as pm

    out_nb.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook), str(out_nb), parameters=parameters,
            kernel_name="python3", cwd=str(notebook.parent), progress_bar=False,
            # the cells' own stdout/stderr, live (papermill's log_output would send stdout to an
            # unconfigured logger, where it is dropped)
            log_output=False, stdout_file=sys.stdout, stderr_file=sys.stderr,
        )
    except pm.PapermillExecutionError as e:
        first = next((line for line in e.source.splitlines() if line.strip()), "")[:80]
        fail(f"stage {stage}: {e.ename}: {e.evalue} (in {notebook.name}, cell starting {first!r})", 1)
    return time.perf_counter() - t0


def path_replacements(stage_dir: Path, root: Path, cwd: Path) -> list[tuple[str, str]]:
    """Absolute staging and repository paths -> the published locations as seen from the
    notebook's working directory (e.g. ../results); the most specific first."""
    def shown(p: Path) -> str:
        return os.path.relpath(p, cwd)

    pairs = [(str(stage_dir / tree), shown(root / tree)) for tree in PUBLISHED]
    return pairs + [(str(stage_dir), shown(root)), (str(root), shown(root))]


def run(args, root: Path, section: dict, notebook: Path, declared: set) -> None:
    for name in remove_stale_staging(root):
        print(f"[{args.stage}] removed stale staging folder {name} (its runner is gone)")
    timings = f"results/timings/{args.stage}.json"
    stage_dir, published = None, False
    try:
        with sigterm_deferred():  # never a staging folder without its pid file
            stage_dir = make_staging(root, args.stage)
        out_nb = stage_dir / "results" / "notebooks" / notebook.name
        # outputs go to the staging folder; inputs (earlier stages' outputs) are read where published;
        # no widgets (a stored notebook holds the static figures, no widget views or state)
        injected = {"results_dir": str(stage_dir / "results"), "data_dir": str(stage_dir / "data"),
                    "inputs_dir": str(root / "data"), "interactive": False}
        parameters = dict(section, **{k: v for k, v in injected.items() if k in declared})
        seconds = _execute(notebook, out_nb, parameters, args.stage)
        wall = normalise_notebook(out_nb, path_replacements(stage_dir, root, notebook.parent), timings)
        with sigterm_deferred():
            backup, kept = publish(stage_dir, root, args.stage)
            published = True
            write_timings(root / timings, {"stage": args.stage, "notebook": args.notebook,
                                           "notebook_wall_time_s": wall, "runner_s": round(seconds, 1)})
        if backup is not None:
            print(f"[{args.stage}] kept {kept} replaced file(s) that `dvc checkout` could not restore "
                  f"in {backup.relative_to(root)}/")
        print(f"[{args.stage}] done in {seconds:.1f} s")
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            what = "after publishing" if published else "nothing published"
            print(f"error: stage {args.stage}: terminated (SIGTERM); {what}", file=sys.stderr)
        raise
    finally:
        cleanup(stage_dir)


def cleanup(stage_dir: Path | None) -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
    stop_children()
    if stage_dir is not None:
        shutil.rmtree(stage_dir, ignore_errors=True)
    signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage")
    ap.add_argument("notebook")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--also", action="append", default=[],
                    help="another params.yaml section whose keys the notebook also takes (e.g. a shared one)")
    ap.add_argument("--root", default=".", help="repository root (results/ and data/ live here)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    root = Path(args.root).resolve()
    lib = root / "lib"
    sys.path.insert(0, str(lib))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    params = read_params(root / args.params, args.params)
    section = stage_parameters(params, [*args.also, args.stage], args.params)
    notebook = root / args.notebook
    if not notebook.is_file():
        fail(f"notebook {args.notebook} not found", 2)

    import papermill as pm

    declared = set(pm.inspect_notebook(str(notebook)))
    unknown = sorted(set(section) - declared)
    if unknown:
        fail(f"{args.params}: {unknown} are not parameters of {args.notebook}", 2)
    run(args, root, section, notebook, declared)


if __name__ == "__main__":
    main()
