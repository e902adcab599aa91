"""The book's build script on bad inputs (one line naming the bad file, the previous site left as it
was, nothing half-written), its chapter preparation, and the Chromium helper the book's and the
plots' checks rely on (tests/test_pipeline.py builds the real book from the micro pipeline)."""
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from browser import Chromium, distinct_colours

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import build_book  # noqa: E402

PNG = (ROOT / "docs" / "figures" / "01_gap_vs_diversity.png").read_bytes()


def executed_notebook(title: str, widget: bool = False) -> nbformat.NotebookNode:
    """A small notebook as run_stage.py publishes it: defaults cell, injected cell, a figure."""
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell(f"# {title}\n\nWhat it shows."),
        v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("# Parameters\nseed = 1", metadata={"tags": ["injected-parameters"]}),
        v4.new_code_cell("fig", outputs=[v4.new_output("display_data", data={"image/png": __import__("base64").b64encode(PNG).decode(), "text/plain": "<Figure>"})]),
    ])
    nb.metadata.update(papermill={"exception": None, "parameters": {"seed": 1}}, language_info={"name": "python"},
                       kernelspec={"name": "python3", "language": "python", "display_name": "Python 3"})
    if widget:  # tqdm under ipywidgets: an HBox of HTML, a progress bar and HTML
        state = {
            "box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_l", "IPY_MODEL_bar", "IPY_MODEL_r"]}},
            "l": {"model_name": "HTMLModel", "state": {"value": "Loading\u2007weights:\u2007100%"}},
            "bar": {"model_name": "FloatProgressModel", "state": {"value": 28, "max": 28}},
            "r": {"model_name": "HTMLModel", "state": {"value": " 28/28 [00:00&lt;00:00]"}},
        }
        nb.metadata["widgets"] = {build_book.WIDGET_STATE: {"state": state}}
        nb.cells[3].outputs.append(v4.new_output("display_data", data={
            build_book.WIDGET_VIEW: {"model_id": "box"}, "text/plain": "Loading weights:   0%|  | 0/28"}))
    return nb


@pytest.fixture
def book_root(tmp_path):
    """A repository with what the book reads: the real dvc.yaml, params.yaml, README and book
    sources, small executed notebooks for every stage and the front page's figures."""
    root = tmp_path / "repo"
    for item in ("dvc.yaml", "params.yaml", "README.md", "docs/book_src", "docs/vendor/mathjax"):
        (root / item).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, root / item)
    for stage in build_book.notebook_stages(yaml.safe_load((ROOT / "dvc.yaml").read_text())):
        path = root / stage["executed"]
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(executed_notebook(path.stem), path)
    for fig in build_book.front_figures((ROOT / "docs/book_src/index.md").read_text()):
        (root / "results/figures").mkdir(parents=True, exist_ok=True)
        (root / "results/figures" / fig).write_bytes(PNG)
    (root / "docs/book").mkdir()
    (root / "docs/book/index.html").write_text("the previous site")
    return root


def run_build(root):
    return subprocess.run([sys.executable, str(ROOT / "scripts/build_book.py"), "--root", str(root)],
                          capture_output=True, text=True, timeout=300)


def assert_untouched(root):
    assert (root / "docs/book/index.html").read_text() == "the previous site"
    assert sorted(p.name for p in (root / "docs").iterdir()) == ["book", "book_src", "vendor"]  # no staging


def test_a_missing_executed_notebook_is_named_and_the_site_is_kept(book_root):
    (book_root / "results/notebooks/07_reward.ipynb").unlink()
    done = run_build(book_root)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: missing executed notebook results/notebooks/07_reward.ipynb "
                                        "(stage reward): run `dvc repro reward` or `dvc pull`"]
    assert_untouched(book_root)


def test_an_unreadable_notebook_or_a_missing_figure_is_named(book_root):
    (book_root / "results/notebooks/03_nash_md.ipynb").write_text('{"cells": [')
    done = run_build(book_root)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: results/notebooks/03_nash_md.ipynb is not a readable notebook")
    nbformat.write(executed_notebook("03"), book_root / "results/notebooks/03_nash_md.ipynb")
    (book_root / "results/figures/12_win_matrix.png").unlink()
    done = run_build(book_root)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: missing figure results/figures/12_win_matrix.png (shown on the "
                                        "front page, docs/book_src/index.md)"]
    assert_untouched(book_root)


def test_a_sphinx_warning_fails_the_build_and_keeps_the_previous_site(book_root):
    # the front page includes the README's "What runs where": without that heading Sphinx warns
    readme = book_root / "README.md"
    readme.write_text(readme.read_text().replace("## What runs where", "## Where it runs"))
    done = run_build(book_root)
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: sphinx-build failed") and "index.md" in last and "start-after" in last, last
    assert_untouched(book_root)


def test_a_chapter_links_its_stage_and_params_and_shows_widgets_as_text(tmp_path):
    src = tmp_path / "08_align.ipynb"
    nbformat.write(executed_notebook("08 · Aligning", widget=True), src)
    stage = {"name": "align", "notebook": "notebooks/08_align.ipynb", "executed": "08_align.ipynb",
             "params": ["gpt2", "align"]}
    build_book.prepare_chapter(tmp_path, stage, tmp_path / "out" / "08_align.ipynb")
    nb = nbformat.read(tmp_path / "out" / "08_align.ipynb", as_version=4)
    assert nb.cells[0].source.startswith("# 08 · Aligning")
    header = nb.cells[1].source
    assert "{ref}`align <stage-align>`" in header and "{ref}`gpt2 <params-gpt2>`" in header
    assert "remove-cell" in nb.cells[2].metadata["tags"]  # the defaults, not what ran
    assert "remove-cell" not in nb.cells[3].metadata["tags"]  # the injected values stay
    widget = nb.cells[4].outputs[1]["data"]
    assert build_book.WIDGET_VIEW not in widget and "widgets" not in nb.metadata
    assert widget["text/plain"] == "Loading weights: 100% |██████████| 28/28 [00:00<00:00]"


def test_a_failed_run_is_refused(tmp_path):
    nb = executed_notebook("01")
    nb.metadata["papermill"]["exception"] = True
    nbformat.write(nb, tmp_path / "01.ipynb")
    stage = {"name": "impossibility", "notebook": "n/01.ipynb", "executed": "01.ipynb", "params": []}
    with pytest.raises(build_book.BookError, match=r"01.ipynb records a failed cell"):
        build_book.prepare_chapter(tmp_path, stage, tmp_path / "out.ipynb")


def test_the_pipeline_and_params_pages_quote_the_files(root):
    dvc_text, params_text = (root / "dvc.yaml").read_text(), (root / "params.yaml").read_text()
    stages = build_book.notebook_stages(yaml.safe_load(dvc_text))
    blocks = build_book.top_level_blocks(dvc_text, under="stages")
    assert list(blocks) == list(yaml.safe_load(dvc_text)["stages"])
    assert all(yaml.safe_load(b) == {n: yaml.safe_load(dvc_text)["stages"][n]} for n, b in blocks.items())
    sections = build_book.top_level_blocks(params_text)
    assert all(yaml.safe_load(b) == {n: yaml.safe_load(params_text)[n]} for n, b in sections.items())
    page = build_book.params_page(params_text, stages)
    assert "(params-gpt2)=" in page and "{ref}`compare <stage-compare>`" in page


def test_the_browser_helper_sees_remote_requests_broken_images_and_errors(tmp_path):
    (tmp_path / "ok.png").write_bytes(PNG)
    (tmp_path / "bad.html").write_text(
        '<!DOCTYPE html><html><head><title>t</title></head><body><img src="ok.png"><img src="gone.png">'
        '<img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script></body></html>')
    (tmp_path / "blank.html").write_text("<!DOCTYPE html><html><body></body></html>")
    with Chromium() as browser:
        page = browser.open(tmp_path / "bad.html")
        assert [Path(s).name for s in page.broken_images] == ["gone.png", "x.png"]
        assert page.remote_requests == ["http://127.0.0.1:9/x.png"]
        assert any('"boom"' in e for e in page.console_errors) and any("gone.png" in e for e in page.console_errors)
        assert distinct_colours(page.screenshot) > 50  # the figure is on screen
        assert distinct_colours(browser.open(tmp_path / "blank.html").screenshot) == 1


def test_a_missing_chromium_skips_here_but_fails_where_required(monkeypatch):
    import browser

    monkeypatch.setattr(browser.shutil, "which", lambda exe: None)
    monkeypatch.delenv(browser.REQUIRE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        browser.require_chromium()
    monkeypatch.setenv(browser.REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match="PLURALIGN_REQUIRE_CHROMIUM=1 but chromium is not installed"):
        browser.require_chromium()
