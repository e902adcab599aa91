"""notebooks/run_stage.py: params read as DVC reads them, one-line errors, all-or-nothing publishing,
backups of what DVC cannot restore, cleanup on SIGTERM and after SIGKILL, byte-stable notebooks."""
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nbformat
import pytest
import yaml

from tiny import NOTEBOOKS, TINY

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
PATHS = ["results_dir", "data_dir", "inputs_dir"]
NASH = list(TINY["nash_md"])
# a cell that records the parameters the notebook received
DUMP = ("import json\nfrom pathlib import Path\nout = Path(results_dir) / 'metrics'\nout.mkdir(parents=True, exist_ok=True)\n"
        "(out / 'params.json').write_text(json.dumps({k: globals()[k] for k in KEYS}, sort_keys=True))")


def make_root(tmp_path, root, params, notebooks=None):
    """A repository root in tmp_path: lib (linked), the runner, notebooks, params.yaml (a dict, or raw text/bytes)."""
    (tmp_path / "notebooks").mkdir()
    os.symlink(root / "lib", tmp_path / "lib")
    shutil.copy(root / "notebooks" / "run_stage.py", tmp_path / "notebooks")
    for nb in NOTEBOOKS.values() if notebooks is None else notebooks:
        shutil.copy(root / "notebooks" / nb, tmp_path / "notebooks")
    if isinstance(params, dict):
        params = yaml.safe_dump(params)
    (tmp_path / "params.yaml").write_bytes(params if isinstance(params, bytes) else params.encode())
    return tmp_path


def run_stage(tmp, stage, nb, *extra):
    return subprocess.run([sys.executable, "notebooks/run_stage.py", stage, f"notebooks/{nb}", *extra], cwd=tmp,
                          capture_output=True, text=True, timeout=300)


def write_notebook(path, keys, *cells):
    """A notebook whose `parameters` cell declares ``keys`` and then runs ``cells``."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("\n".join(f"{k} = None" for k in keys), metadata={"tags": ["parameters"]}),
        *(nbformat.v4.new_code_cell(c) for c in cells),
    ])
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, path)


def nash_yaml(**raw):
    """The tiny nash_md section as YAML text, with some values given as raw YAML scalars."""
    lines = [f"  {k}: {raw.get(k, json.dumps(v))}" for k, v in TINY["nash_md"].items()]
    return "nash_md:\n" + "\n".join(lines) + "\n"


def load_runner(root):
    spec = importlib.util.spec_from_file_location("run_stage", root / "notebooks" / "run_stage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def staging_folders(tmp):
    return [p.name for p in tmp.glob(".stage-*") if p.name != ".stage-backup"]


# ---------------------------------------------------------------- validation and all-or-nothing publishing

def test_runner_rejects_bad_params_before_writing_anything(tmp_path, root):
    tmp = make_root(tmp_path, root, {"impossibility": dict(TINY["impossibility"], beta=-0.5)}, ["01_impossibility.ipynb"])
    out = run_stage(tmp, "impossibility", "01_impossibility.ipynb")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: params.yaml: impossibility.beta = -0.5: must be > 0"
    assert not (tmp / "results").exists() and not (tmp / "data").exists()
    assert not list(tmp.glob(".stage-*"))


def test_runner_publishes_nothing_when_a_cell_fails(tmp_path, root):
    tmp = make_root(tmp_path, root, {"nash_md": TINY["nash_md"]}, [])
    write_notebook(tmp / "notebooks" / "broken.ipynb", [*NASH, "results_dir", "data_dir"],
                   "from pathlib import Path\n(Path(results_dir) / 'metrics').mkdir(parents=True)\n"
                   "(Path(results_dir) / 'metrics' / 'half.json').write_text('{}')",
                   "raise ValueError('T is too small for this world')")
    out = run_stage(tmp, "nash_md", "broken.ipynb")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == ("error: stage nash_md: ValueError: T is too small for this world "
                                                   "(in broken.ipynb, cell starting \"raise ValueError('T is too small for this world')\")")
    assert not (tmp / "results").exists() and not list(tmp.glob(".stage-*"))


def test_runner_names_a_missing_section(tmp_path, root):
    tmp = make_root(tmp_path, root, {"nash_md": TINY["nash_md"]}, ["01_impossibility.ipynb"])
    out = run_stage(tmp, "impossibility", "01_impossibility.ipynb")
    assert out.returncode == 2 and out.stderr.strip() == "error: params.yaml has no section 'impossibility'"


def test_runner_rejects_keys_the_notebook_does_not_declare(tmp_path, root):
    params = {"nash_md": TINY["nash_md"], "gpt2": TINY["gpt2"]}
    tmp = make_root(tmp_path, root, params, ["03_nash_md.ipynb"])
    out = run_stage(tmp, "nash_md", "03_nash_md.ipynb", "--also", "gpt2")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: params.yaml: ['base_model', 'imdb', 'max_new_tokens'")
    assert "are not parameters of notebooks/03_nash_md.ipynb" in out.stderr and not (tmp / "results").exists()


# ---------------------------------------------------------------- params are read as DVC reads them

def test_params_are_parsed_exactly_as_dvc_parses_them(tmp_path, root):
    from dvc.utils.serialize import load_yaml  # what `dvc repro` / dvc.lock use for params.yaml

    text = "nash_md:\n  T: 0300\n  tau: 1e-2\nem_clusters:\n  l2: 1e-2\n  soft: no\n  n_users: 040\n  init: on\n"
    (tmp_path / "params.yaml").write_text(text)
    params = load_runner(root).read_params(tmp_path / "params.yaml", "params.yaml")
    assert params == load_yaml(tmp_path / "params.yaml")
    assert params["nash_md"] == {"T": 300, "tau": 0.01}
    assert params["em_clusters"] == {"l2": 0.01, "soft": "no", "n_users": 40, "init": "on"}


def test_notebook_gets_the_value_dvc_lock_records(tmp_path, root):
    # YAML 1.1 (PyYAML) read `T: 0300` as octal 192; DVC (YAML 1.2) records 300
    tmp = make_root(tmp_path, root, nash_yaml(T="0300"), [])
    write_notebook(tmp / "notebooks" / "dump.ipynb", [*NASH, "results_dir"], f"KEYS = {NASH!r}\n" + DUMP)
    out = run_stage(tmp, "nash_md", "dump.ipynb")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp / "results" / "metrics" / "params.json").read_text()) == dict(TINY["nash_md"], T=300)


def test_the_runner_turns_the_sliders_off(tmp_path, root):
    # `interactive` (sliders, pluralign.explore) is True in a notebook run by hand; the pipeline injects False
    tmp = make_root(tmp_path, root, {"nash_md": TINY["nash_md"]}, [])
    write_notebook(tmp / "notebooks" / "dump.ipynb", [*NASH, "results_dir", "interactive"],
                   f"KEYS = {[*NASH, 'interactive']!r}\n" + DUMP)
    out = run_stage(tmp, "nash_md", "dump.ipynb")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp / "results" / "metrics" / "params.json").read_text())["interactive"] is False
    stored = nbformat.read(tmp / "results" / "notebooks" / "dump.ipynb", as_version=4)
    injected = next(c for c in stored.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "interactive = False" in injected.source


def test_yaml_1_1_boolean_words_are_strings_as_for_dvc(tmp_path, root):
    section = "\n".join(f"  {k}: {'no' if k == 'soft' else json.dumps(v)}" for k, v in TINY["em_clusters"].items())
    tmp = make_root(tmp_path, root, "em_clusters:\n" + section + "\n", [])
    out = run_stage(tmp, "em_clusters", "02_em_clusters.ipynb")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: params.yaml: em_clusters.soft = 'no': must be true or false"


def test_duplicate_key_is_one_line_naming_it(tmp_path, root):
    tmp = make_root(tmp_path, root, nash_yaml() + "  tau: 0.3\n", [])
    out = run_stage(tmp, "nash_md", "03_nash_md.ipynb")
    assert out.returncode == 2
    line = len(TINY["nash_md"]) + 2
    assert out.stderr.strip() == (f'error: params.yaml:{line}:3: found duplicate key "tau" with value "0.3" '
                                  f'(original value: "{TINY["nash_md"]["tau"]}")')


@pytest.mark.parametrize("text,message", [
    (b"- nash_md\n- 2\n", "error: params.yaml: the top level must be a mapping of sections, got a list"),
    (b"nash_md:\n  tau: 0.2\xff\n", "error: params.yaml:2:11: not valid UTF-8 (byte 0xff)"),
    (b"nash_md:\n  tau: 0.2\n   T: 3\n", "error: params.yaml:3:5: mapping values are not allowed here"),
    (b"nash_md:\n  eps_grid: [0.1\n", "error: params.yaml:3:1: expected ',' or ']', but got '<stream end>' "
                                       "(while parsing a flow sequence started at 2:13)"),
], ids=["top-level-list", "not-utf8", "bad-indent", "unclosed-list"])
def test_bad_params_file_gives_one_line_naming_file_and_place(tmp_path, root, text, message):
    tmp = make_root(tmp_path, root, text, [])
    out = run_stage(tmp, "nash_md", "03_nash_md.ipynb")
    assert out.returncode == 2 and out.stderr.strip() == message
    assert not (tmp / "results").exists() and not list(tmp.glob(".stage-*"))


# ---------------------------------------------------------------- keeping outputs DVC cannot restore

def put_in_cache(tmp, data: bytes, suffix="") -> str:
    """Store ``data`` as DVC 3 does (.dvc/cache/files/md5/ab/cdef...); a directory listing has suffix '.dir'."""
    md5 = hashlib.md5(data).hexdigest() + suffix
    obj = tmp / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    obj.parent.mkdir(parents=True, exist_ok=True)
    obj.write_bytes(data)
    return md5


def write_lock(tmp, stage, outs):
    lock = {"schema": "2.0", "stages": {stage: {"cmd": "x", "outs": [
        {"path": p, "hash": "md5", "md5": m, "size": 1} for p, m in outs.items()]}}}
    (tmp / "dvc.lock").write_text(yaml.safe_dump(lock))


def test_checkout_restorable_reads_dvc_lock_and_the_cache(tmp_path, root):
    runner = load_runner(root)
    cached, uncached = put_in_cache(tmp_path, b"cached\n"), hashlib.md5(b"gone\n").hexdigest()
    in_dir, missing = put_in_cache(tmp_path, b"a\n"), hashlib.md5(b"b\n").hexdigest()
    listing = json.dumps([{"md5": in_dir, "relpath": "a.txt"}, {"md5": missing, "relpath": "sub/b.txt"}]).encode()
    dir_md5 = put_in_cache(tmp_path, listing, suffix=".dir")
    write_lock(tmp_path, "em_clusters", {"results/m.json": cached, "results/gone.png": uncached, "data/em_clusters": dir_md5})
    assert runner.checkout_restorable(tmp_path, "em_clusters") == {"results/m.json": cached, "data/em_clusters/a.txt": in_dir}
    assert runner.checkout_restorable(tmp_path, "nash_md") == {}
    (tmp_path / "dvc.lock").unlink()
    assert runner.checkout_restorable(tmp_path, "em_clusters") == {}


def test_replaced_outputs_dvc_cannot_restore_are_kept(tmp_path, root):
    tmp = make_root(tmp_path, root, {"nash_md": TINY["nash_md"]}, [])
    write_notebook(tmp / "notebooks" / "writer.ipynb", [*NASH, "results_dir"],
                   "from pathlib import Path\nr = Path(results_dir)\n(r / 'metrics').mkdir(parents=True)\n(r / 'plots').mkdir()\n"
                   "(r / 'metrics' / 'm.json').write_text('new\\n')\n(r / 'plots' / 'p.csv').write_text('new\\n')")
    for rel, old in [("results/metrics/m.json", "direct run\n"), ("results/plots/p.csv", "cached\n")]:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(old)
    write_lock(tmp, "nash_md", {"results/plots/p.csv": put_in_cache(tmp, b"cached\n")})
    out = run_stage(tmp, "nash_md", "writer.ipynb")
    assert out.returncode == 0, out.stderr
    backups = list((tmp / ".stage-backup").iterdir())
    assert len(backups) == 1 and backups[0].name.startswith("nash_md-")
    assert f"[nash_md] kept 1 replaced file(s) that `dvc checkout` could not restore in .stage-backup/{backups[0].name}/" \
        in out.stdout.splitlines()
    assert (backups[0] / "results" / "metrics" / "m.json").read_text() == "direct run\n"
    assert not (backups[0] / "results" / "plots").exists()  # `dvc checkout` brings that one back
    assert (tmp / "results" / "metrics" / "m.json").read_text() == (tmp / "results" / "plots" / "p.csv").read_text() == "new\n"


def test_backups_timings_and_staging_are_ignored_by_git_and_dvc(root):
    gitignore = (root / ".gitignore").read_text().split()
    assert {"/.stage-backup/", "/results/timings/", ".stage-*/"} <= set(gitignore)
    assert ".stage-*/" in (root / ".dvcignore").read_text().split()


# ---------------------------------------------------------------- SIGTERM and SIGKILL leave nothing behind

def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_removes_staging_and_stops_the_kernel(tmp_path, root):
    tmp = make_root(tmp_path, root, {"nash_md": TINY["nash_md"]}, [])
    write_notebook(tmp / "notebooks" / "sleepy.ipynb", [*NASH, "results_dir"],
                   "import os, time\nfrom pathlib import Path\n(Path(results_dir) / 'metrics').mkdir(parents=True)\n"
                   "(Path(results_dir) / 'metrics' / 'kernel.pid').write_text(str(os.getpid()))\ntime.sleep(300)")
    proc = subprocess.Popen([sys.executable, "notebooks/run_stage.py", "nash_md", "notebooks/sleepy.ipynb"], cwd=tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(tmp.glob(".stage-*/results/metrics/kernel.pid")) and time.time() < deadline:
            time.sleep(0.2)
        marker = list(tmp.glob(".stage-*/results/metrics/kernel.pid"))
        assert marker, "the notebook never started"
        time.sleep(0.2)
        kernel = int(marker[0].read_text())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "error: stage nash_md: terminated (SIGTERM); nothing published"
    assert not list(tmp.glob(".stage-*")) and not (tmp / "results").exists()
    deadline = time.time() + 10
    while pid_alive(kernel) and time.time() < deadline:  # killed; init reaps it
        time.sleep(0.1)
    assert not pid_alive(kernel)


def test_stale_staging_folders_of_dead_runners_are_removed(tmp_path, root):
    tmp = make_root(tmp_path, root, {"nash_md": TINY["nash_md"]}, [])
    write_notebook(tmp / "notebooks" / "dump.ipynb", [*NASH, "results_dir", "data_dir"], f"KEYS = {NASH!r}\n" + DUMP,
                   "Path(data_dir).mkdir()\n(Path(data_dir) / 'd.txt').write_text('d')")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name, pid in [(f".stage-nash_md-{dead.stdout.strip()}-killed", dead.stdout.strip()),
                      (f".stage-nash_md-{os.getpid()}-running", os.getpid())]:
        (tmp / name / "results").mkdir(parents=True)
        (tmp / name / "pid").write_text(f"{pid}\n")
    (tmp / ".stage-backup" / "nash_md-x").mkdir(parents=True)
    out = run_stage(tmp, "nash_md", "dump.ipynb")
    assert out.returncode == 0, out.stderr
    assert staging_folders(tmp) == [f".stage-nash_md-{os.getpid()}-running"]
    assert (tmp / ".stage-backup" / "nash_md-x").is_dir()
    assert f"[nash_md] removed stale staging folder .stage-nash_md-{dead.stdout.strip()}-killed (its runner is gone)" \
        in out.stdout.splitlines()
    published = {p.relative_to(tmp).as_posix() for p in [*(tmp / "results").rglob("*"), *(tmp / "data").rglob("*")]
                 if p.is_file()}
    assert published == {"results/metrics/params.json", "results/notebooks/dump.ipynb", "data/d.txt",
                         "results/timings/nash_md.json"}  # no pid file


# ---------------------------------------------------------------- byte-stable executed notebooks

STABLE_CELLS = [
    "from pluralign import report\nwatch = report.Stopwatch('00_tiny').__enter__()\nprint(results_dir, inputs_dir)",
    "import random, time\nfrom tqdm import tqdm\nprint('before')\n"
    "for i in tqdm(range(5), desc='loop'):\n    time.sleep(random.uniform(0.01, 0.12))\n"
    "for i in tqdm(range(3), desc='gone', leave=False):\n    time.sleep(random.uniform(0.01, 0.12))\nprint('after')",
    f"KEYS = {NASH!r}\n" + DUMP,
    # tqdm.auto's notebook bar (a widget view) where ipywidgets is installed, as Hugging Face's libraries show
    "from tqdm.auto import tqdm as auto_tqdm\nfor i in auto_tqdm(range(3), desc='widget'):\n    time.sleep(random.uniform(0.01, 0.05))",
    "watch.__exit__(None, None, None)",
]


def test_executed_notebook_is_byte_stable(tmp_path, root):
    tmp = make_root(tmp_path, root, {"nash_md": TINY["nash_md"]}, [])
    write_notebook(tmp / "notebooks" / "stable.ipynb", [*NASH, *PATHS], *STABLE_CELLS)
    published = tmp / "results" / "notebooks" / "stable.ipynb"
    runs, logs = [], []
    for _ in range(2):
        out = run_stage(tmp, "nash_md", "stable.ipynb")
        assert out.returncode == 0, out.stderr
        runs.append(published.read_bytes())
        logs.append(out.stdout)
    assert runs[0] == runs[1]
    # the wall time is still printed live, in the run log
    assert all(any(line.startswith("[00_tiny] wall time: ") and line.endswith(" s") for line in log.splitlines())
               for log in logs)
    assert not (tmp / ".stage-backup").exists()  # identical content: nothing to keep
    text = runs[0].decode()
    assert str(tmp) not in text and ".stage-" not in text
    nb = nbformat.reads(text, as_version=4)
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert injected.id == "injected-parameters"
    assert 'results_dir = "../results"' in injected.source and 'inputs_dir = "../data"' in injected.source
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    streams = "".join(o.text for o in outputs if o.output_type == "stream")
    assert "../results ../data\n" in streams
    assert "loop: 100%|██████████| 5/5\n" in streams and "it/s" not in streams and "gone" not in streams
    assert "widget-view" not in text and "widget-state" not in text and "widgets" not in nb.metadata
    assert ("[00_tiny] wall time: recorded in results/timings/nash_md.json "
            "(not stored here so this notebook is byte-stable)\n") in streams
    timings = json.loads((tmp / "results" / "timings" / "nash_md.json").read_text())
    assert set(timings["notebook_wall_time_s"]) == {"00_tiny"} and timings["notebook_wall_time_s"]["00_tiny"] > 0
