"""Every notebook runs under papermill with tiny params, writes its metrics and figures, and
gives identical metrics when run twice (determinism)."""
import json

import papermill as pm
import pytest

from tiny import NOTEBOOKS, TINY

pytestmark = pytest.mark.slow


def execute(root, tmp_path, stage):
    out = tmp_path / "out"
    tmp_path.mkdir(parents=True, exist_ok=True)
    # interactive=False as the pipeline's runner injects it: each figure drawn once, no widgets
    pm.execute_notebook(str(root / "notebooks" / NOTEBOOKS[stage]), str(tmp_path / NOTEBOOKS[stage]),
                        parameters=dict(TINY[stage], results_dir=str(out / "results"), data_dir=str(out / "data"),
                                        interactive=False),
                        kernel_name="python3", cwd=str(root / "notebooks"), progress_bar=False)
    assert "application/vnd.jupyter.widget" not in (tmp_path / NOTEBOOKS[stage]).read_text()
    return out


@pytest.mark.parametrize("stage", list(NOTEBOOKS))
def test_notebook_runs_with_tiny_params(root, tmp_path, stage, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(root / "lib"))
    out = execute(root, tmp_path, stage)
    prefix = NOTEBOOKS[stage][:2]
    metrics = json.loads((out / "results" / "metrics" / f"{NOTEBOOKS[stage][:-6]}.json").read_text())
    assert metrics
    assert list((out / "results" / "figures").glob(f"{prefix}_*.png"))
    if stage == "impossibility":
        assert metrics["maxmin_worst_objective_never_below_rlhf"] and metrics["bound_holds_everywhere"]
    if stage == "em_clusters":
        assert (out / "data" / "em_clusters" / "assignments.csv").exists()
    if stage == "nash_md":
        assert abs(metrics["constrained"]["p_preference_beats_reward"] - 50 / 99) < 1e-6
        assert metrics["nash_md_bound_holds"]
    again = execute(root, tmp_path / "again", stage)
    assert (again / "results" / "metrics" / f"{NOTEBOOKS[stage][:-6]}.json").read_text() == \
        (out / "results" / "metrics" / f"{NOTEBOOKS[stage][:-6]}.json").read_text()


def test_gpt2_notebooks_run_in_order_on_each_others_outputs(root, tmp_path, monkeypatch):
    from tiny import ALSO, GPT2_CHAIN

    monkeypatch.setenv("PYTHONPATH", str(root / "lib"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, res = tmp_path / "data", tmp_path / "results"
    for stage, nb in GPT2_CHAIN:
        also = {k: v for section in ALSO.get(stage, []) for k, v in TINY[section].items()}
        pm.execute_notebook(str(root / "notebooks" / nb), str(tmp_path / nb),
                            parameters=dict(TINY["gpt2"], **also, **TINY[stage], results_dir=str(res), data_dir=str(data),
                                            inputs_dir=str(data)),
                            kernel_name="python3", cwd=str(root / "notebooks"), progress_bar=False)
        assert (res / "metrics" / f"{nb[:-6]}.json").exists()
    assert (data / "gpt2" / "base_policy" / "config.json").exists()
    from datasets import load_from_disk

    ds = load_from_disk(str(data / "gpt2" / "preferences" / "ratio_3"))
    assert set(ds) == {"train", "test"} and ds["train"].column_names == ["prompt", "chosen", "rejected", "user_id", "group"]


def test_tulu2_notebooks_run_in_order_smoke(root, tmp_path, monkeypatch):
    from tiny import TULU_CHAIN

    monkeypatch.setenv("PYTHONPATH", str(root / "lib"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data, res = tmp_path / "data", tmp_path / "results"
    for stage, nb in TULU_CHAIN:
        pm.execute_notebook(str(root / "notebooks" / nb), str(tmp_path / nb),
                            parameters=dict(TINY["tulu2"], **TINY[stage], results_dir=str(res), data_dir=str(data),
                                            inputs_dir=str(data)),
                            kernel_name="python3", cwd=str(root / "notebooks"), progress_bar=False)
    metrics = json.loads((res / "metrics" / "14_tulu2_align.json").read_text())
    assert set(metrics["win_rate_vs_base"]) == {"single majority", "single minority", "maxmin majority", "maxmin minority"}
    assert (data / "tulu2_policies" / "maxmin_seed1" / "policy" / "adapter_config.json").exists()
    assert set(metrics["minus_single"]) == {"maxmin majority", "maxmin minority"}
    assert metrics["win_rate_vs_base"]["maxmin minority"]["seeds"] == 2
    assert json.loads((data / "tulu2" / "sources.json").read_text())["ppo_prompts"] == "raw/alpaca_prompts.json"
