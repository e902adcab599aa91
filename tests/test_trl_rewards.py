"""MaxMinReward picks the worst-off group, and drives TRL 1.16's GRPOTrainer and RLOOTrainer
offline on a tiny local GPT-2 policy."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pluralign import corpus, lm
from pluralign import reward_models as rm
from pluralign.trl_rewards import MaxMinReward


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("base")
    tok = lm.build_word_tokenizer(corpus.vocabulary())
    lm.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), lm.load_tokenizer(str(path))


class WordCount(torch.nn.Module):
    """A reward model with a known output: how often ``word_id`` occurs in the text."""

    def __init__(self, word_id):
        super().__init__()
        self.word_id = word_id

    def forward(self, input_ids, attention_mask=None, **kw):
        return SimpleNamespace(logits=(input_ids == self.word_id).sum(1, keepdim=True).float())


def test_picks_the_worst_off_group(base):
    _, tok = base
    models = [WordCount(tok.convert_tokens_to_ids("great")), WordCount(tok.convert_tokens_to_ids("awful"))]
    prompts, completions = ["the movie", "the film"], ["great great", " awful"]  # with and without a space
    # raw: group 0 scores [2, 0] (mean 1), group 1 scores [0, 1] (mean ½) → group 1 drives the batch
    reward = MaxMinReward(models, tok, rule="argmin")
    assert reward.__name__ == "maxmin_argmin"
    assert reward(prompts=prompts, completions=completions, completion_ids=None) == [0.0, 1.0]
    # standardised with group 1's mean at −1: its z-scores [1, 2] (mean 1.5) now beat group 0's
    logged = []
    z = MaxMinReward(models, tok, rule="argmin", standardise=([0.0, -1.0], [1.0, 1.0]))
    assert z(prompts=prompts, completions=completions, log_metric=lambda n, v: logged.append((n, v)),
             trainer_state=None) == [2.0, 0.0]
    assert reward.picked == [1] and z.picked == [0] and z.group_means == [[1.0, 1.5]]
    assert ("maxmin_argmin/picked_group", 0.0) in logged
    # the released code's rule: per-completion minimum, no group singled out
    sample_min = MaxMinReward(models, tok, rule="sample_min")
    assert sample_min(prompts=prompts, completions=completions) == [0.0, 0.0] and sample_min.picked == [-1]


def test_refuses_bad_input(base):
    _, tok = base
    with pytest.raises(ValueError, match="rule must be one of"):
        MaxMinReward([], tok, rule="max")
    with pytest.raises(ValueError, match=r"shape \(2,\) each"):
        MaxMinReward([WordCount(0), WordCount(1)], tok, standardise=([0.0], [1.0]))
    with pytest.raises(ValueError, match="standard-format"):
        MaxMinReward([WordCount(0)], tok)(prompts=[[{"role": "user", "content": "hi"}]], completions=["x"])


def test_first_batch_standardisation_fits_on_the_first_call(base):
    """standardise="first_batch": the first batch's raw scores give each group's mean and unbiased
    std (so that batch's z-scores have mean 0 and std 1 per group), kept for later calls."""
    _, tok = base
    models = [WordCount(tok.convert_tokens_to_ids("great")), WordCount(tok.convert_tokens_to_ids("awful"))]
    reward = MaxMinReward(models, tok, rule="argmin", standardise="first_batch")
    first = ["great great awful", "great", "awful awful awful", "the"]
    reward(prompts=["the movie"] * 4, completions=first)
    raw = torch.tensor([[2.0, 1.0, 0.0, 0.0], [1.0, 0.0, 3.0, 0.0]], dtype=torch.float32)  # as the models score
    torch.testing.assert_close(reward.rewards.mean, raw.mean(1))
    torch.testing.assert_close(reward.rewards.std, raw.std(1))
    assert reward.group_means[0] == pytest.approx([0.0, 0.0], abs=1e-6)
    # the second batch is scored on the first batch's scale: group 1 (raw mean 1) is now worst off
    out = reward(prompts=["the movie"] * 2, completions=["great great great", "the"])
    assert reward.picked[1] == 1 and out == pytest.approx(((torch.tensor([0.0, 0.0]) - 1.0) / raw[1].std()).tolist())
    with pytest.raises(ValueError, match="standardise must be None, \\(mean, std\\) or 'first_batch', got 'last'"):
        MaxMinReward(models, tok, standardise="last")


def _reward(path, tok):
    """Two tiny neural group reward models, standardised on a few base-style responses."""
    models = [rm.load_reward_model(path, tok, seed=s) for s in (1, 2)]
    reward = MaxMinReward(models, tok, rule="argmin")
    return reward.fit_standardisation(["the movie"] * 3, [" was good .", " was bad .", " i loved it ."])


def _prompts():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": ["the movie", "i watched it", "what a", "the film was"]})


CPU = dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
           max_steps=2, per_device_train_batch_size=2, num_generations=2, max_completion_length=8,
           dataloader_num_workers=0, seed=0, gradient_checkpointing=False)  # tiny model: no recompute


def test_grpo_trainer_runs_with_maxmin_reward(base, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    path, tok = base
    reward = _reward(path, tok)
    trainer = GRPOTrainer(model=lm.load_causal_lm(path, tok), reward_funcs=[reward], processing_class=tok,
                          args=GRPOConfig(output_dir=str(tmp_path), **CPU), train_dataset=_prompts())
    trainer.train()
    assert trainer.state.global_step == 2
    assert len(reward.picked) == 2 and set(reward.picked) <= {0, 1}
    assert any("maxmin_argmin/picked_group" in row for row in trainer.state.log_history)


def test_rloo_trainer_runs_with_maxmin_reward(base, tmp_path):
    from trl import RLOOConfig, RLOOTrainer

    path, tok = base
    reward = _reward(path, tok)
    trainer = RLOOTrainer(model=lm.load_causal_lm(path, tok), reward_funcs=[reward], processing_class=tok,
                          args=RLOOConfig(output_dir=str(tmp_path), **CPU), train_dataset=_prompts())
    trainer.train()
    assert trainer.state.global_step == 2
    assert len(reward.picked) == 2 and set(reward.picked) <= {0, 1}


def _global_means_worker(rank, world, init, shares, out):
    import torch.distributed as dist

    from pluralign.trl_rewards import batch_group_means, batch_group_moments

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        means = batch_group_means(shares[rank])
        torch.save(means, f"{out}/means_{rank}.pt")
        torch.save(batch_group_moments(shares[rank]), f"{out}/moments_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_the_argmin_is_over_the_global_batch_with_two_processes(tmp_path):
    """Two gloo processes with uneven shares whose own argmins disagree: both get the means of the
    concatenated batch, so both pick the group one process holding every completion would pick."""
    import torch.multiprocessing as mp

    from pluralign.trl_rewards import batch_group_means

    # process 0 alone would pick group 1 (0.0 < 0.5), process 1 alone group 0 (−3 < −0.5);
    # together group 0 is worst: (0.5·2 − 3·3) / 5 = −1.6 against (0·2 − 0.5·3) / 5 = −0.3
    shares = [torch.tensor([[0.5, 0.5], [0.0, 0.0]]), torch.tensor([[-3.0, -3.0, -3.0], [-0.5, -0.5, -0.5]])]
    init = f"file://{tmp_path}/rendezvous"
    mp.spawn(_global_means_worker, args=(2, init, shares, str(tmp_path)), nprocs=2, join=True)
    together = batch_group_means(torch.cat(shares, 1))
    assert [int(batch_group_means(s).argmin()) for s in shares] == [1, 0]
    everything = torch.cat(shares, 1).double()
    for rank in range(2):
        means = torch.load(tmp_path / f"means_{rank}.pt")
        torch.testing.assert_close(means, together)
        assert int(means.argmin()) == int(together.argmin()) == 0
        mean, std = torch.load(tmp_path / f"moments_{rank}.pt")  # first_batch standardisation's statistics
        torch.testing.assert_close(mean, everything.mean(1))
        torch.testing.assert_close(std, everything.std(1))


def test_trl_maxmin_script_takes_a_grpo_step_with_lora_reward_adapters(tmp_path):
    """scripts/trl_maxmin.py on CPU: a tiny Llama policy (LoRA) and two LoRA reward adapters, one
    GRPO step; the reward standardised on the first batch, the group picked in TRL's logs."""
    import importlib.util
    import json

    from pluralign import lora, soups

    base = tmp_path / "base"
    tok = lm.build_word_tokenizer(soups.standin_vocabulary(), add_bos=True)
    lora.tiny_llama(tok, hidden_size=32, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=64).save_pretrained(base)
    tok.save_pretrained(base)
    tok = lm.load_tokenizer(str(base))
    folders = lora.LoraRewardMixture(str(base), tok, 2, seed=0).save(tmp_path / "rms")
    data = soups.make_standin(tmp_path / "data", n_per_dim=2, n_prompts=8, n_eval=1)
    spec = importlib.util.spec_from_file_location("trl_maxmin", Path(__file__).resolve().parents[1] / "scripts" / "trl_maxmin.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    trainer, reward = script.main(["--trainer", "grpo", "--base", str(base), "--rewards", *folders,
                                   "--prompts", str(data["prompts"]), "--out", str(out), "--cpu", "--steps", "1",
                                   "--per-device-batch", "4", "--num-generations", "2", "--max-completion-length", "6",
                                   "--lora-r", "4", "--lora-alpha", "8", "--n-prompts", "8"])
    assert trainer.state.global_step == 1 and reward.picked and set(reward.picked) <= {0, 1}
    assert reward.group_means[0] == pytest.approx([0.0, 0.0], abs=1e-5)  # the first batch fixed the scale
    record = json.loads((out / "maxmin.json").read_text())
    assert record["picked"] == reward.picked and record["processes"] == 1
    assert any("maxmin_argmin/picked_group" in row for row in record["log_history"])
    assert (out / "policy" / "adapter_config.json").exists()
    with pytest.raises(SystemExit):
        script.parse(["--base", "b", "--rewards", "r", "--prompts", "p", "--out", "o", "--steps", "0"])
