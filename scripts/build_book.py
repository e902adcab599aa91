#!/usr/bin/env python
"""Build the book: a static HTML site of the executed notebooks, the `book` stage of dvc.yaml.

    python scripts/build_book.py [--root .] [--out docs/book]

Reads every notebook stage of dvc.yaml (a stage whose command runs a notebook) and its executed
copy (the stage's ``results/notebooks/*.ipynb`` out), the front page ``docs/book_src/index.md``
(with the README sections it includes and the ``results/figures/`` it shows), ``params.yaml``,
and writes ``docs/book/`` with Sphinx, MyST-NB and the Jupyter Book theme (sphinx-book-theme).
Nothing is executed.  Each chapter gets a box after its title cell linking its stage and its params.yaml
sections on the generated pages ``pipeline`` (every stage as dvc.yaml writes it) and ``params``
(every section as params.yaml writes it); the notebook's own default-parameters cell is left out
(the injected *Parameters* cell below it shows what ran).

All or nothing: a missing or unreadable input stops the build with one line naming it (exit 2),
a Sphinx warning fails it (exit 1), and the site is built in a staging folder beside the output
that replaces it only when complete.  The site loads nothing from the network (MathJax from
``docs/vendor/``) and is byte-stable for the same inputs.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import yaml

SOURCE = Path("docs/book_src")  # conf.py, index.md (front page with the toctrees)
MATHJAX = Path("docs/vendor/mathjax")
EXECUTED = "results/notebooks/"
FIGURE_REF = re.compile(r"\bfigures/([\w.-]+\.png)\b")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
LEVEL = re.compile(r"(^|: )(WARNING|ERROR|CRITICAL|SEVERE)\b|^(Extension error|Exception occurred|Traceback)")


class BookError(Exception):
    """A bad input; the message is the one line to print."""


# ----------------------------------------------------------------- what the book reads

def notebook_stages(dvc: dict) -> list[dict]:
    """The stages whose command runs a notebook, in dvc.yaml's order, with the notebook, its
    executed copy (the stage's out under results/notebooks/) and the params sections it reads."""
    stages = []
    for name, stage in (dvc.get("stages") or {}).items():
        notebook = next((tok for tok in str(stage.get("cmd", "")).split() if tok.endswith(".ipynb")), None)
        if notebook is None:
            continue
        outs = [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]
        executed = [o for o in outs if o.startswith(EXECUTED) and o.endswith(".ipynb")]
        if len(executed) != 1:
            raise BookError(f"dvc.yaml stage {name!r} runs {notebook} but has {len(executed)} outs under {EXECUTED}")
        params = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])]
        stages.append({"name": name, "notebook": notebook, "executed": executed[0], "params": params})
    return stages


def front_figures(index_text: str) -> list[str]:
    """The results/figures/ files the front page shows (its ``figures/NAME.png`` references)."""
    return sorted(set(FIGURE_REF.findall(index_text)))


def book_inputs(root: Path) -> list[str]:
    """Every file the build reads, relative to the root: the `book` stage's deps, except dvc.yaml,
    which DVC refuses as a dependency (see the stage's comment there)."""
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    figures = front_figures((root / SOURCE / "index.md").read_text())
    return ([s["executed"] for s in notebook_stages(dvc)] + [f"results/figures/{f}" for f in figures]
            + ["README.md", "dvc.yaml", "params.yaml", "scripts/build_book.py", str(SOURCE), str(MATHJAX)])


def top_level_blocks(text: str, under: str | None = None) -> dict[str, str]:
    """Each top-level key's text as the file writes it (comments kept), or each key's under
    ``under`` (dedented); trailing blank and comment lines go to the next block."""
    node = yaml.compose(text)
    if under is not None:
        node = next(v for k, v in node.value if k.value == under)
    lines = text.splitlines()
    blocks = {}
    for key, value in node.value:
        chunk = lines[key.start_mark.line:max(value.end_mark.line, key.start_mark.line + 1)]
        while chunk and (not chunk[-1].strip() or chunk[-1].lstrip().startswith("#")):
            chunk.pop()
        blocks[key.value] = textwrap.dedent("\n".join(chunk))
    return blocks


# ----------------------------------------------------------------- the generated pages

def _fence(text: str, lang: str = "yaml") -> str:
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def pipeline_page(dvc_text: str, stages: list[dict]) -> str:
    by_name = {s["name"]: s for s in stages}
    parts = ["# The pipeline\n",
             "Every stage of `dvc.yaml`, as the file writes it, in the order `dvc repro` runs them. A "
             "notebook stage runs `python notebooks/run_stage.py STAGE NOTEBOOK`: it validates the "
             "params.yaml sections listed under `params`, executes the notebook with them and publishes "
             "its outputs only if every cell succeeded; `dvc.lock` records what the current results came from.\n"]
    for name, block in top_level_blocks(dvc_text, under="stages").items():
        st = by_name.get(name)
        title = f"`{name}`" + (f": {{doc}}`notebooks/{Path(st['executed']).stem}`" if st else "")
        parts.append(f"({_label('stage', name)})=\n## {title}\n")
        if st and st["params"]:
            links = ", ".join(f"{{ref}}`{p} <{_label('params', p)}>`" for p in st["params"])
            parts.append(f"params.yaml sections: {links}\n")
        parts.append(_fence(block) + "\n")
    return "\n".join(parts)


def params_page(params_text: str, stages: list[dict]) -> str:
    users: dict[str, list[str]] = {}
    for st in stages:
        for p in st["params"]:
            users.setdefault(p, []).append(st["name"])
    parts = ["# The parameters\n",
             "Every section of `params.yaml`, as the file writes it. A stage's notebook gets its own "
             "section and the shared ones it lists (`gpt2`, `tulu2`, ...); each chapter's *Parameters* "
             "cell shows the values its run used.\n"]
    for name, block in top_level_blocks(params_text).items():
        parts.append(f"({_label('params', name)})=\n## `{name}`\n")
        if users.get(name):
            links = ", ".join(f"{{ref}}`{s} <{_label('stage', s)}>`" for s in users[name])
            parts.append(f"read by the stages {links}\n")
        parts.append(_fence(block) + "\n")
    return "\n".join(parts)


def _label(kind: str, name: str) -> str:
    return f"{kind}-{name}".replace("_", "-")


# ----------------------------------------------------------------- the chapters

def _widget_text(model_id: str, state: dict) -> str | None:
    """A widget's final state as text: tqdm's bar is an HBox of HTML, a progress bar, HTML."""
    model = state.get(model_id)
    if model is None:
        return None
    s, kind = model.get("state", {}), model.get("model_name", "")
    if kind in ("HBoxModel", "VBoxModel"):
        texts = [_widget_text(c.removeprefix("IPY_MODEL_"), state) for c in s.get("children", [])]
        return " ".join(t for t in texts if t)
    if kind in ("HTMLModel", "LabelModel"):
        text = html.unescape(re.sub(r"<[^>]+>", "", str(s.get("value", ""))))
        return text.replace("\u2007", " ").replace("\xa0", " ").strip()  # tqdm pads with figure spaces
    if kind in ("FloatProgressModel", "IntProgressModel"):
        frac = s.get("value", 0) / s["max"] if s.get("max") else 0.0
        return "|" + "█" * round(10 * frac) + " " * (10 - round(10 * frac)) + "|"
    return None


def _header(stage: dict) -> str:
    params = ", ".join(f"{{ref}}`{p} <{_label('params', p)}>`" for p in stage["params"]) or "none"
    return ("```{admonition} Pipeline\n"
            f"Stage {{ref}}`{stage['name']} <{_label('stage', stage['name'])}>` of `dvc.yaml` "
            f"(`{stage['notebook']}`, executed copy `{stage['executed']}`) · params.yaml sections: {params}. "
            "The values this run used are in the *Parameters* cell below.\n```")


def prepare_chapter(root: Path, stage: dict, dest: Path) -> None:
    """The executed notebook as a chapter: the stage box after its title, widget outputs as the
    text of their final state, the default-parameters cell hidden (the injected one stays)."""
    import nbformat

    path = root / stage["executed"]
    if not path.is_file():
        raise BookError(f"missing executed notebook {stage['executed']} (stage {stage['name']}): "
                        f"run `dvc repro {stage['name']}` or `dvc pull`")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # nbformat raises several kinds (JSON, schema, encoding)
        raise BookError(f"{stage['executed']} is not a readable notebook: {str(e).splitlines()[0]}") from None
    papermill = nb.metadata.get("papermill", {})
    if papermill.get("exception"):
        raise BookError(f"{stage['executed']} records a failed cell: re-run `dvc repro {stage['name']}`")
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags and "injected-parameters" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
        for out in cell.get("outputs", []):
            view = out.get("data", {}).pop(WIDGET_VIEW, None)
            if view is not None:
                text = _widget_text(view.get("model_id", ""), state)
                if text:
                    out["data"]["text/plain"] = text
    title = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")), -1)
    nb.cells.insert(title + 1, nbformat.v4.new_markdown_cell(_header(stage), id="pipeline-stage"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)


# ----------------------------------------------------------------- the build

def build_source(root: Path, src: Path) -> None:
    """The Sphinx source tree: docs/book_src, the chapters, the generated pages, the figures."""
    for need in (SOURCE / "conf.py", SOURCE / "index.md", MATHJAX / "tex-svg-full.js", Path("README.md"),
                 Path("dvc.yaml"), Path("params.yaml")):
        if not (root / need).is_file():
            raise BookError(f"missing {need}")
    dvc_text, params_text = (root / "dvc.yaml").read_text(), (root / "params.yaml").read_text()
    stages = notebook_stages(yaml.safe_load(dvc_text))
    shutil.copytree(root / SOURCE, src, ignore=shutil.ignore_patterns("__pycache__", "_build"))
    shutil.copytree(root / MATHJAX, src / "_static" / "mathjax")
    shutil.copy(root / "README.md", src / "_readme.md")
    for fig in front_figures((root / SOURCE / "index.md").read_text()):
        if not (root / "results" / "figures" / fig).is_file():
            raise BookError(f"missing figure results/figures/{fig} (shown on the front page, docs/book_src/index.md)")
        (src / "figures").mkdir(exist_ok=True)
        shutil.copy(root / "results" / "figures" / fig, src / "figures" / fig)
    for stage in stages:
        prepare_chapter(root, stage, src / "notebooks" / Path(stage["executed"]).name)
    (src / "pipeline.md").write_text(pipeline_page(dvc_text, stages))
    (src / "params.md").write_text(params_page(params_text, stages))


def sphinx(src: Path, out: Path, doctrees: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0", "SOURCE_DATE_EPOCH": "0"}  # stable search index and dates
    done = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",
                           "-d", str(doctrees), str(src), str(out)], capture_output=True, text=True, env=env)
    if done.returncode:
        records: list[str] = []  # one per message: a message's own line breaks are joined
        for line in (done.stderr + done.stdout).replace(str(src) + "/", "").splitlines():
            if LEVEL.search(line) or not records:
                records.append(line.strip())
            elif line.strip():
                records[-1] += " " + line.strip()
        print("\n".join(records[:20]), file=sys.stderr)
        first = next((r for r in records if LEVEL.search(r)), records[0] if records else "no output")
        more = f" (and {len(records) - 1} more messages above)" if len(records) > 1 else ""
        raise RuntimeError(f"sphinx-build failed: {first}{more}")


def prune(site: Path) -> None:
    """Drop what no page loads (the site is tracked by git): Sphinx's incremental-build stamp, the
    themes' source maps (read only by a browser's developer tools) and translation catalogues
    (used at build time), and the empty _sources/ (html_copy_source is off)."""
    (site / ".buildinfo").unlink(missing_ok=True)
    for f in site.rglob("*.map"):
        f.unlink()
    shutil.rmtree(site / "_static" / "locales", ignore_errors=True)
    if (site / "_sources").is_dir() and not any((site / "_sources").iterdir()):
        (site / "_sources").rmdir()


def build(root: Path, out: Path) -> None:
    out = out if out.is_absolute() else root / out
    out.parent.mkdir(parents=True, exist_ok=True)
    # beside the output (same file system: the final move is a rename); the site goes to html/ in it
    # because MyST-NB writes a jupyter_execute/ folder next to Sphinx's output folder
    staging = out.parent / f".{out.name}-staging-{os.getpid()}"
    old = staging / "previous"
    try:
        with tempfile.TemporaryDirectory(prefix="book-src-") as tmp:
            src = Path(tmp) / "src"
            build_source(root, src)
            sphinx(src, staging / "html", Path(tmp) / "doctrees")
        prune(staging / "html")
        if out.exists():
            out.rename(old)
        (staging / "html").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--out", type=Path, default=Path("docs/book"))
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the staging folder is removed
    try:
        build(args.root.resolve(), args.out)
    except BookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"book: {args.out}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
