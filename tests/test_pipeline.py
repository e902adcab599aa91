"""The whole DVC pipeline at micro scale on a temporary copy of the repository, its book included,
then what a reader opens: the book's pages and `dvc plots show`'s HTML, in headless Chromium."""
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from browser import Chromium, distinct_colours
from tiny import TINY

# one pipeline run serves the three tests: under xdist they share a worker (make test: --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]

# the repository items the pipeline needs (data/raw: git-tracked inputs; README.md and docs/: the book)
ITEMS = ("lib", "notebooks", "scripts", "configs", "data/raw", "dvc.yaml", ".dvcignore", "README.md",
         "docs/book_src", "docs/vendor")


def sh(cmd, cwd):
    bindir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env, timeout=600)


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def micro(root, tmp_path_factory):
    """The micro pipeline run: every DVC command the tests look at runs here, once."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    for item in ITEMS:
        src, dst = root / item, repo / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst, **({"ignore": shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")} if src.is_dir() else {}))
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY))
    for cmd in ("git init -q", "dvc init -q"):
        assert sh(cmd, repo).returncode == 0
    shutil.copy(root / ".dvc" / "config", repo / ".dvc" / "config")  # the project's settings (plots template)
    assert sh("dvc config core.analytics false", repo).returncode == 0
    run = {"first": sh("dvc repro", repo)}
    if run["first"].returncode == 0:
        run["book_digest"] = tree_digest(repo / "docs" / "book")
        run["second"] = sh("dvc repro", repo)
        run["status"] = sh("dvc status -q", repo)
        run["metrics"] = sh("dvc metrics show", repo)
        run["rebuilt"] = sh("dvc repro -f --single-item book", repo)  # the same inputs: the same site?
        run["plots"] = sh("dvc plots show", repo)
    return repo, run


def test_dvc_repro_end_to_end_then_noop(micro):
    repo, run = micro
    first = run["first"]
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    for name in ("01_impossibility", "02_em_clusters", "03_nash_md", "09_evaluate", "10_condorcet", "12_compare",
                 "14_tulu2_align"):
        assert (repo / "results" / "metrics" / f"{name}.json").exists()
        assert (repo / "results" / "notebooks" / f"{name}.ipynb").exists()
    second = run["second"]
    assert second.returncode == 0 and "Data and pipelines are up to date" in second.stdout
    assert run["status"].returncode == 0
    assert "01_impossibility.json" in run["metrics"].stdout


def test_every_headline_claim_is_read_back_from_a_real_run(micro):
    """scripts/claims.py reads the keys the notebooks write: a renamed key shows up here, not as a
    silently missing row in someone's comparison of two runs."""
    from pluralign import claims

    repo, run = micro
    assert run["first"].returncode == 0
    table = claims.read_claims(repo / "results" / "metrics")
    assert (table.verdict != claims.MISSING).all(), table[table.verdict == claims.MISSING].claim.tolist()
    assert (table.lo <= table.hi).all()
    assert "3:1 MaxMin − single at matched KL, minority" in set(table.claim)  # tiny params: 3:1, β = 0.5
    assert "nash β=0.5 − single at matched KL, learned preference" in set(table.claim)


def _output_images(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


def test_the_book_is_built_from_the_executed_notebooks(micro):
    repo, run = micro
    assert run["first"].returncode == 0
    book = repo / "docs" / "book"
    executed = sorted((repo / "results" / "notebooks").glob("*.ipynb"))
    assert len(executed) == 14
    for nb in executed:
        page = (book / "notebooks" / f"{nb.stem}.html").read_text()
        n = _output_images(nb)
        assert n > 0 and len(re.findall(r'<img\b[^>]*\bsrc="\.\./_images/', page)) == n, nb.name
        stage = re.search(r'href="\.\./pipeline\.html#stage-([\w-]+)"', page)
        assert stage, f"{nb.name}: no link to its stage"
        assert 'href="../params.html#params-' in page, f"{nb.name}: no link to its params"
        assert "cdn." not in page and "unpkg.com" not in page, nb.name
    index = (book / "index.html").read_text()
    assert "What runs where" in index and "Tulu2-7B + LoRA" in index  # the README's table, included
    assert len(re.findall(r'<img\b[^>]*\bsrc="_images/', index)) == 6
    pipeline, params = (book / "pipeline.html").read_text(), (book / "params.html").read_text()
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]:
        assert f'id="stage-{stage.replace("_", "-")}"' in pipeline, stage
    for section in TINY:
        assert f'id="params-{section.replace("_", "-")}"' in params, section
    assert (book / "_static" / "mathjax" / "tex-svg-full.js").is_file()
    assert not any(p.name.startswith(".book-") for p in (repo / "docs").iterdir())  # no staging left
    # the book is an uncached out recorded in dvc.lock, and the same inputs give the same bytes
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["book"]
    assert [o["path"] for o in lock["outs"]] == ["docs/book"]
    assert run["rebuilt"].returncode == 0, run["rebuilt"].stderr[-2000:]
    assert tree_digest(book) == run["book_digest"]


def test_the_book_renders_in_chromium_with_nothing_from_the_network(micro):
    repo, run = micro
    assert run["first"].returncode == 0
    book = repo / "docs" / "book"
    pages = [book / "index.html", book / "pipeline.html", book / "params.html",
             *sorted((book / "notebooks").glob("*.html"))]
    assert len(pages) == 17
    with Chromium() as browser:
        for path in pages:
            ready = "document.querySelectorAll('mjx-container svg').length >= 2" if path.name == "index.html" else None
            page = browser.open(path, ready_js=ready)
            name = path.relative_to(book)
            assert page.remote_requests == [], (name, page.remote_requests)
            assert page.console_errors == [], (name, page.console_errors)
            assert page.broken_images == [], (name, page.broken_images)
            assert distinct_colours(page.screenshot) > 50, f"{name}: blank screenshot"
            figures = [src for src, _ in page.images if "/_images/" in src]
            if path.parent.name == "notebooks":
                assert len(figures) == _output_images(repo / "results" / "notebooks" / f"{path.stem}.ipynb"), name
            if path.name == "index.html":
                assert len(figures) == 6
                assert any(u.split("?")[0].endswith("_static/mathjax/tex-svg-full.js") for u in page.requests)


def test_dvc_plots_show_renders_offline_in_chromium(micro):
    repo, run = micro
    plots = run.get("plots")
    assert plots is not None and plots.returncode == 0, (plots.stdout + plots.stderr)[-2000:] if plots else run["first"].stderr[-2000:]
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert "<script src=" not in html  # vega, vega-lite and vega-embed are inlined (docs/vendor/dvc_plots.html)
    n = html.count("vegaEmbed('#")
    declared = sum(len(st.get("plots", [])) for st in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values())
    assert n == declared > 0
    with Chromium() as browser:
        page = browser.open(repo / "dvc_plots" / "index.html",
                            ready_js=f"document.querySelectorAll('.vega-embed canvas').length === {n}")
        assert page.remote_requests == [] and page.console_errors == [], (page.remote_requests, page.console_errors)
        shots = browser.element_screenshots(".vega-embed canvas")
        assert len(shots) == n
        blank = [i for i, png in enumerate(shots) if distinct_colours(png) < 10]
        assert not blank, f"blank plots: {blank}"
