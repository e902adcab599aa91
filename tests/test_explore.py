"""Exploring safely: pluralign.explore (sliders live in a kernel with ipywidgets, one static figure
otherwise), the notebooks' defaults for a run by hand (outputs under scratch/, inputs from data/),
and a run by hand of a notebook leaving the pipeline's results as dvc.lock records them."""
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import papermill as pm  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from pluralign import explore  # noqa: E402
from tiny import NOTEBOOKS, TINY  # noqa: E402

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class Recorder:
    """draw/compute doubles that record their calls; draw makes a real matplotlib figure."""

    def __init__(self):
        self.drawn, self.computed = [], []

    def draw(self, data):
        self.drawn.append(data)
        fig, ax = plt.subplots()
        ax.plot([0, 1], [data["y"], data["y"]])
        return fig

    def compute(self, **values):
        self.computed.append(values)
        if values["a"] < 0:
            raise ValueError("a must be >= 0")
        return {"y": values["a"] * values["n"]}


@pytest.fixture
def displayed(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: shown.extend(objs))
    return shown


def controls():
    return {"a": explore.Slider(0.5, 0.0, 2.0, 0.1, "a"), "n": explore.Slider(3, 1, 10, 1)}


def test_static_draws_first_once_and_shows_no_widget(displayed):
    rec = Recorder()
    fig = explore.figure(rec.draw, rec.compute, {"y": 7.0}, False, **controls())
    assert rec.drawn == [{"y": 7.0}] and rec.computed == [] and displayed == []
    assert fig.axes[0].lines[0].get_ydata().tolist() == [7.0, 7.0]
    plt.close(fig)


def test_outside_a_kernel_live_falls_back_to_static(displayed):
    # pytest runs no IPython kernel: a frontend could not show a widget here
    assert explore.can_go_live() is False
    rec = Recorder()
    plt.close(explore.figure(rec.draw, rec.compute, {"y": 1.0}, True, **controls()))
    assert rec.drawn == [{"y": 1.0}] and rec.computed == [] and displayed == []


def test_live_shows_sliders_and_redraws_on_a_move(displayed, monkeypatch):
    import ipywidgets as w

    monkeypatch.setattr(explore, "can_go_live", lambda: True)
    rec = Recorder()
    fig = explore.figure(rec.draw, rec.compute, {"y": 7.0}, True, note="one world only", **controls())
    assert rec.drawn == [{"y": 7.0}] and rec.computed == []  # the first figure is the notebook's own data
    assert fig.axes[0].lines[0].get_ydata().tolist() == [7.0, 7.0]
    box = next(o for o in displayed if isinstance(o, w.VBox))
    a, n = box.children[0].children
    assert isinstance(a, w.FloatSlider) and isinstance(n, w.IntSlider)
    assert (a.value, a.min, a.max, n.value, n.description) == (0.5, 0.0, 2.0, 3, "n")
    assert not a.continuous_update  # recompute on release, not on every pixel
    status = box.children[2]
    assert status.value.startswith("one world only; move a slider")
    n.value = 4
    assert rec.computed == [{"a": 0.5, "n": 4}] and rec.drawn[-1] == {"y": 2.0}
    assert status.value.startswith("recomputed and drawn in ") and status.value.endswith(" s")
    a.value = 0.0
    assert rec.drawn[-1] == {"y": 0.0}
    a.min = -1.0
    a.value = -1.0  # a value the kernel refuses: one line under the figure, no exception, sliders kept
    assert status.value == "not redrawn: ValueError: a must be >= 0" and len(rec.drawn) == 3
    plt.close("all")


def test_slider_range_holds_any_initial_value_and_integer_kind():
    s = explore.Slider(5.0, 0.1, 2.0, 0.05)
    assert (s.lo, s.hi, s.integer) == (0.1, 5.0, False)
    assert explore.Slider(1, 2, 5, 1).lo == 1 and explore.Slider(1, 2, 5, 1).integer
    assert not explore.Slider(2, 2, 5, 0.5).integer
    with pytest.raises(ValueError, match="step must be > 0"):
        explore.Slider(1.0, 0.0, 2.0, 0.0)


def test_one_thread_limits_torch_and_blas_and_restores_them():
    from threadpoolctl import threadpool_info

    import scipy.linalg  # noqa: F401  (loads the BLAS SciPy's optimisers use)

    def blas():
        return sorted(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

    torch_before, blas_before = torch.get_num_threads(), blas()
    with explore.one_thread():
        assert torch.get_num_threads() == 1 and set(blas()) == {1}
    assert torch.get_num_threads() == torch_before and blas() == blas_before


# ---------------------------------------------------------------- the notebooks' defaults are for a run by hand

ALL_NOTEBOOKS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_defaults_write_to_scratch_and_read_published_inputs(root, name):
    params = pm.inspect_notebook(str(root / "notebooks" / name))
    assert params["results_dir"]["default"] == '"../scratch/results"'
    assert params["data_dir"]["default"] == '"../scratch/data"'
    if "inputs_dir" in params:
        assert params["inputs_dir"]["default"] == '"../data"'
    if name in NOTEBOOKS.values():  # the tabular ones have sliders, on by default
        assert params["interactive"]["default"] == "True"
    first = json.loads((root / "notebooks" / name).read_text())["cells"][0]
    assert first["cell_type"] == "markdown" and "scratch/" in "".join(first["source"])


def test_scratch_is_ignored_by_git_and_dvc(root):
    assert "/scratch/" in (root / ".gitignore").read_text().split()
    assert "/scratch/" in (root / ".dvcignore").read_text().split()


# ---------------------------------------------------------------- a run by hand in a temporary repository

def tree(repo):
    """{path: bytes} of every file outside .git, .dvc (DVC's own state) and __pycache__."""
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.rglob("*")
            if p.is_file() and p.relative_to(repo).parts[0] not in (".git", ".dvc") and "__pycache__" not in p.parts}


@pytest.mark.slow
def test_a_run_by_hand_writes_only_under_scratch_and_leaves_dvc_status_clean(root, tmp_path, monkeypatch):
    from test_pipeline import sh

    repo = tmp_path / "repo"
    repo.mkdir()
    for item in ("lib", "notebooks", "dvc.yaml", ".dvcignore", ".gitignore"):
        src = root / item
        (shutil.copytree if src.is_dir() else shutil.copy)(
            src, repo / item, **({"ignore": shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")} if src.is_dir() else {}))
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY))
    for cmd in ("git init -q", "dvc init -q", "dvc config core.analytics false"):
        assert sh(cmd, repo).returncode == 0
    done = sh("dvc repro impossibility", repo)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    stored = (repo / "results" / "notebooks" / "01_impossibility.ipynb").read_text()
    assert WIDGET_VIEW not in stored and '"widgets"' not in stored  # the pipeline's copy: static figures only
    assert sh("dvc status -q impossibility", repo).returncode == 0
    before, untracked = tree(repo), sh("git status --porcelain --untracked-files=all", repo).stdout

    # "Run all" as JupyterLab would: the notebook's own defaults for paths and `interactive`, tiny sizes
    monkeypatch.setenv("PYTHONPATH", str(repo / "lib"))
    pm.execute_notebook(str(repo / "notebooks" / "01_impossibility.ipynb"), str(tmp_path / "by_hand.ipynb"),
                        parameters=TINY["impossibility"], kernel_name="python3", cwd=str(repo / "notebooks"), progress_bar=False)

    after = tree(repo)
    changed = sorted(p for p in after if before.get(p) != after[p]) + sorted(set(before) - set(after))
    assert changed and all(p.startswith("scratch/") for p in changed), changed
    assert "scratch/results/figures/01_gap_vs_diversity.png" in changed
    assert "scratch/results/metrics/01_impossibility.json" in changed
    assert sh("dvc status -q impossibility", repo).returncode == 0  # the only stage this repository has run
    assert sh("git status --porcelain --untracked-files=all", repo).stdout == untracked  # scratch/ is ignored
    by_hand = (tmp_path / "by_hand.ipynb").read_text()
    assert WIDGET_VIEW in by_hand  # the sliders were built (a frontend would show them)
    # the figure saved by hand is the pipeline's, at the same params
    assert (repo / "scratch/results/figures/01_gap_vs_diversity.png").read_bytes() == \
        (repo / "results/figures/01_gap_vs_diversity.png").read_bytes()
