"""The whole DVC pipeline at micro scale on a temporary copy of the repository."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny import TINY

pytestmark = pytest.mark.slow


def sh(cmd, cwd):
    bindir = str(Path(sys.executable).parent)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env, timeout=600)


def test_dvc_repro_end_to_end_then_noop(root, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for item in ("lib", "notebooks", "scripts", "configs", "data/raw", "dvc.yaml", ".dvcignore"):  # data/raw: git-tracked inputs
        src = root / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / item, **({"ignore": shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")} if src.is_dir() else {}))
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY))
    for cmd in ("git init -q", "dvc init -q", "dvc config core.analytics false"):
        assert sh(cmd, repo).returncode == 0
    first = sh("dvc repro", repo)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    for name in ("01_impossibility", "02_em_clusters", "03_nash_md", "09_evaluate", "10_condorcet", "12_compare",
                 "14_tulu2_align"):
        assert (repo / "results" / "metrics" / f"{name}.json").exists()
        assert (repo / "results" / "notebooks" / f"{name}.ipynb").exists()
    second = sh("dvc repro", repo)
    assert second.returncode == 0 and "Data and pipelines are up to date" in second.stdout
    assert sh("dvc status -q", repo).returncode == 0
    shown = sh("dvc metrics show", repo)
    assert "01_impossibility.json" in shown.stdout
