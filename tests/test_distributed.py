"""PPO and Nash-MD-PG through accelerate with 2 CPU processes (gloo): a DDP step and an FSDP2 step
are the step one process takes on the global batch; a process that leaves a trainable parameter
without gradient does not stall the other; accelerate's checkpoints restore a run; and on one
process an accelerator changes no number (the pipeline passes none)."""
import dataclasses
import math

import pytest
import torch

from multiproc import cpu_fsdp_accelerator, run
from pluralign import lm, lora
from pluralign.nash_md_lm import NashMD, NashMDConfig
from pluralign.ppo import PPO, PolicyModule, PPOConfig, full_state_dict, make_accelerator

WORDS = [f"w{i}" for i in range(16)]
GLOBAL_BATCH = 8
TOL = dict(rtol=1e-9, atol=1e-10)  # float64 models: the sums' order is all that differs


def tokenizer():
    return lm.build_word_tokenizer(WORDS)


def gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=64, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return GPT2LMHeadModel(cfg).double().eval()


def llama(tok, peft=True):
    from peft import get_peft_model

    torch.manual_seed(0)
    base = lora.tiny_llama(tok, hidden_size=16, n_layer=2, n_head=2, n_kv_head=1, intermediate_size=32).double().eval()
    if not peft:
        return base
    torch.manual_seed(1)
    return get_peft_model(base, lora.policy_lora_config(4, 8)).eval()


def checkpointed(model):
    lora.checkpoint_layers(model)  # activation checkpointing of every decoder layer, as the Tulu2 runs
    return model


def queries(tok, n=GLOBAL_BATCH):
    texts = ["w1 w2 w3", "w4", "w7 w8", "w9 w10 w11 w12"]
    return lm.encode_prompts(tok, [texts[i % len(texts)] for i in range(n)])


def share(tensor_batch, tok, word="w5"):
    """A reward with a known form: the share of response tokens equal to ``word``."""
    ids, mask = tensor_batch
    return (((ids == tok.convert_tokens_to_ids(word)) & mask).sum(1) / mask.sum(1).clamp_min(1)).double()


def part(roll, rank, world):
    """This process's share of a rollout of the global batch (rows rank·B/W … (rank+1)·B/W − 1)."""
    n = len(roll) // world
    rows = slice(rank * n, (rank + 1) * n)
    return type(roll)(**{f.name: getattr(roll, f.name)[rows] for f in dataclasses.fields(roll)})


def preference(roll, tok):
    return torch.sigmoid(4 * (share((roll.response_ids, roll.response_mask), tok)
                              - share((roll.opponent_ids, roll.opponent_mask), tok)))


PPO_KW = dict(ppo_epochs=2, max_new_tokens=6, kl_target=0.5, kl_horizon=10, whiten_rewards=True, seed=0)
NASH_KW = dict(beta=0.5, tau=0.05, ppo_epochs=2, max_new_tokens=6, seed=0)


def ppo_step(model, tok, world, accelerator=None, roll=None, rank=0):
    """One PPO iteration: on the global batch's rollout ``roll`` (sampled here when None), this
    process's share of it.  Returns (trainer, the global rollout, step stats)."""
    n = GLOBAL_BATCH // world
    ppo = PPO(model, tok, PPOConfig(batch_size=n, mini_batch_size=n, **PPO_KW), accelerator=accelerator)
    roll = ppo.rollout(*queries(tok)) if roll is None else roll
    mine = part(roll, rank, world)
    stats = ppo.step(mine, share((mine.response_ids, mine.response_mask), tok))
    return ppo, roll, stats


def nash_step(model, tok, world, accelerator=None, roll=None, rank=0, **kw):
    n = GLOBAL_BATCH // world
    trainer = NashMD(model, tok, NashMDConfig(batch_size=n, **{**NASH_KW, **kw}), accelerator=accelerator)
    roll = trainer.rollout(*queries(tok)) if roll is None else roll
    mine = part(roll, rank, world)
    stats = trainer.step(mine, preference(mine, tok))
    return trainer, roll, stats


def assert_same(got: dict, want: dict, what: str = ""):
    """Every tensor of ``want`` equal in ``got`` to float64 summation-order tolerance; the message
    names the offenders and by how much they differ."""
    assert want and set(want) <= set(got), sorted(set(want) - set(got))[:3]
    bad = {n: float((got[n] - v).abs().max()) for n, v in want.items()
           if not torch.allclose(got[n], v, rtol=TOL["rtol"], atol=TOL["atol"])}
    assert not bad, f"{what}: {len(bad)} tensors differ, e.g. {sorted(bad.items(), key=lambda kv: -kv[1])[:3]}"


def trained(module) -> dict:
    """The trainable parameters by name (full tensors: the gathered state under FSDP)."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {n: v.detach().clone() for n, v in module.state_dict().items() if n in names}


# ---- DDP ---------------------------------------------------------------------------------------
def _ddp_worker(rank, world, out):
    from accelerate.utils import DistributedType

    acc = make_accelerator(cpu=True)
    assert acc.distributed_type == DistributedType.MULTI_CPU and acc.num_processes == world
    tok = tokenizer()
    result = {}
    ppo, roll, stats = ppo_step(gpt2(tok), tok, world, acc, rank=rank)
    result["ppo"] = dict(wrapper=type(ppo.policy).__name__, params=trained(ppo.policy.module), roll=roll,
                         kl_coef=ppo.kl_coef, kl=stats["kl"])
    trainer, roll, _ = nash_step(llama(tok), tok, world, acc, rank=rank)
    result["nash"] = dict(wrapper=type(trainer.policy).__name__, params=trained(trainer.policy.module), roll=roll)
    torch.save(result, out / f"ddp_{rank}.pt")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    run(_ddp_worker, out, out, timeout=150)
    return [torch.load(out / f"ddp_{r}.pt", weights_only=False) for r in range(2)]


def test_ddp_ppo_step_is_the_one_process_step_on_the_global_batch(ddp):
    """2 processes with 4 sequences each (their halves of one rollout of 8) end the PPO iteration
    (2 epochs, whitened rewards and advantages, adaptive β) with the parameters and β of one
    process stepping on all 8: whitening, per-token means and the KL are over both halves."""
    tok = tokenizer()
    assert ddp[0]["ppo"]["wrapper"] == "DistributedDataParallel"
    ppo, _, stats = ppo_step(gpt2(tok), tok, 1, roll=ddp[0]["ppo"]["roll"])
    single = trained(ppo.policy)
    assert set(single) == set(ddp[0]["ppo"]["params"]) and any("value_head" in n for n in single)
    for r in range(2):
        assert_same(ddp[r]["ppo"]["params"], single, f"rank {r}")
        assert ddp[r]["ppo"]["kl_coef"] == pytest.approx(ppo.kl_coef, rel=1e-12)
        assert ddp[r]["ppo"]["kl"] == pytest.approx(stats["kl"], rel=1e-12)
    assert float(single["value_head.summary.weight"].abs().max()) > 1e-4  # zero-initialised: the step moved it
    assert ppo.n_updates == 2


def test_ddp_nash_md_step_is_the_one_process_step_on_the_global_batch(ddp):
    tok = tokenizer()
    assert ddp[0]["nash"]["wrapper"] == "DistributedDataParallel"
    trainer, _, _ = nash_step(llama(tok), tok, 1, roll=ddp[0]["nash"]["roll"])
    single = trained(trainer.policy)
    start = trained(PolicyModule(llama(tok)))
    assert set(single) == set(ddp[0]["nash"]["params"]) and all("lora_" in n for n in single)
    assert max(float((single[n] - start[n]).abs().max()) for n in single) > 1e-4  # the step moved θ
    for r in range(2):
        assert_same(ddp[r]["nash"]["params"], single, f"rank {r}")


def _unused_worker(rank, world, out):
    acc = make_accelerator(cpu=True)
    tok = tokenizer()
    model = gpt2(tok)
    ln_f = model.transformer.ln_f
    ln_f.register_parameter("extra", torch.nn.Parameter(torch.zeros(ln_f.weight.shape, dtype=torch.float64)))
    # only process 0's forward uses `extra`: on process 1 it gets no gradient in any backward
    ln_f.register_forward_hook(lambda module, args, output: output + module.extra if rank == 0 else None)
    ppo = PPO(model, tok, PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, max_new_tokens=4, seed=rank),
              accelerator=acc)
    roll = ppo.rollout(*queries(tok, 4))
    ppo.step(roll, share((roll.response_ids, roll.response_mask), tok))
    flat = torch.cat([p.detach().flatten() for p in ppo.params])[None]
    every = acc.gather(flat)
    if rank == 0:
        torch.save({"spread": float((every - every[0]).abs().max()), "extra": ln_f.extra.detach().clone()},
                   out / "unused.pt")


def test_a_parameter_without_gradient_on_one_process_does_not_hang(tmp_path):
    """Process 1 never uses one trainable tensor: DDP (find_unused_parameters, pluralign.ppo.
    make_accelerator) all-reduces a zero for it instead of waiting, so both processes finish 4
    optimiser steps with the same parameters — the removed hand-written hook waited forever."""
    run(_unused_worker, tmp_path, tmp_path, timeout=90)
    result = torch.load(tmp_path / "unused.pt")
    assert result["spread"] == 0.0
    assert float(result["extra"].abs().max()) > 0  # process 0's gradient reached both


# ---- one process: the accelerator changes nothing ----------------------------------------------
@pytest.fixture
def plain_accelerator():
    from accelerate.state import AcceleratorState

    acc = make_accelerator(cpu=True)
    yield acc
    AcceleratorState._reset_state(True)


def test_one_process_with_an_accelerator_gives_the_same_bits(plain_accelerator):
    """The scripts' path on one CPU process (accelerator.prepare, backward, clip_grad_norm_) and the
    pipeline's (no accelerator) take bit-identical PPO and Nash-MD steps (2 iterations each)."""
    tok = tokenizer()

    def ppo_run(acc):
        ppo = PPO(gpt2(tok), tok, PPOConfig(batch_size=4, mini_batch_size=2, **PPO_KW), accelerator=acc)
        rows = []
        for _ in range(2):
            roll = ppo.rollout(*queries(tok, 4))
            rows.append((roll.response_ids, ppo.step(roll, share((roll.response_ids, roll.response_mask), tok))))
        return trained(ppo.policy), rows

    def nash_run(acc):
        trainer = NashMD(llama(tok), tok, NashMDConfig(batch_size=4, mini_batch_size=2, opponent="ema_mixture",
                                                       ema_decay=0.5, **NASH_KW), accelerator=acc)
        rows = []
        for _ in range(2):
            roll = trainer.rollout(*queries(tok, 4))
            rows.append((roll.opponent_ids, trainer.step(roll, preference(roll, tok))))
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}, rows

    for fn in (ppo_run, nash_run):
        (params_a, rows_a), (params_b, rows_b) = fn(None), fn(plain_accelerator)
        assert params_a.keys() == params_b.keys()
        assert all(torch.equal(params_a[n], params_b[n]) for n in params_a)
        for (ids_a, stats_a), (ids_b, stats_b) in zip(rows_a, rows_b):
            assert torch.equal(ids_a, ids_b) and stats_a.keys() == stats_b.keys()
            assert all(stats_a[k] == stats_b[k] or (math.isnan(stats_a[k]) and math.isnan(stats_b[k])) for k in stats_a)


# ---- FSDP2 -------------------------------------------------------------------------------------
def _fsdp_worker(rank, world, out):
    from safetensors.torch import load_file

    acc = cpu_fsdp_accelerator()
    tok = tokenizer()
    result = {}

    # PPO, LoRA policy (reference: adapters disabled; activation checkpointing), with a checkpoint round trip
    ppo, roll, _ = ppo_step(checkpointed(llama(tok)), tok, world, acc, rank=rank)
    assert type(ppo.policy).__name__.startswith("FSDP") and type(ppo.params[0]).__name__ == "DTensor"
    result["ppo_lora"] = dict(params=full_state_dict(acc, ppo.policy), roll=roll, kl_coef=ppo.kl_coef)
    acc.register_for_checkpointing(ppo)
    acc.save_state(str(out / "state"))
    second = ppo.rollout(*queries(tok))
    ppo.step(part(second, rank, world), share((part(second, rank, world).response_ids,
                                                part(second, rank, world).response_mask), tok))
    after_two = full_state_dict(acc, ppo.policy)
    acc.load_state(str(out / "state"))
    restored = full_state_dict(acc, ppo.policy)
    again = ppo.rollout(*queries(tok))  # the random states came back too: the same second rollout
    ppo.step(part(again, rank, world), share((part(again, rank, world).response_ids,
                                               part(again, rank, world).response_mask), tok))
    result["checkpoint"] = dict(restored=restored, after_two=after_two, after_resume=full_state_dict(acc, ppo.policy),
                                same_rollout=torch.equal(second.response_ids, again.response_ids), n_updates=ppo.n_updates)
    ppo.save_pretrained(out / "saved")
    acc.wait_for_everyone()
    if rank == 0:
        result["saved"] = {**load_file(str(out / "saved" / "adapter_model.safetensors")),
                           **{f"value_head.{k}": v for k, v in load_file(str(out / "saved" / "value_head.safetensors")).items()}}

    # PPO, full fine-tuning (reference: a frozen copy, sharded too)
    ppo, roll, _ = ppo_step(llama(tok, peft=False), tok, world, acc, rank=rank)
    assert type(ppo.ref_model).__name__.startswith("FSDP")
    result["ppo_full"] = dict(params=full_state_dict(acc, ppo.policy), roll=roll)

    # Nash-MD-PG, LoRA policy, the θ̄–μ mixture opponent (θ̄: a second adapter, sharded with θ)
    trainer, roll, _ = nash_step(llama(tok), tok, world, acc, rank=rank, opponent="ema_mixture", ema_decay=0.5)
    state = full_state_dict(acc, trainer.policy)
    result["nash_lora"] = dict(params=state, roll=roll)
    if rank == 0:
        torch.save(result, out / "fsdp.pt")


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    run(_fsdp_worker, out, out, timeout=240)
    return torch.load(out / "fsdp.pt", weights_only=False)


def test_fsdp_ppo_lora_step_is_the_one_process_step(fsdp):
    tok = tokenizer()
    ppo, _, _ = ppo_step(checkpointed(llama(tok)), tok, 1, roll=fsdp["ppo_lora"]["roll"])
    assert_same(fsdp["ppo_lora"]["params"], trained(ppo.policy))
    assert fsdp["ppo_lora"]["kl_coef"] == pytest.approx(ppo.kl_coef, rel=1e-12)
    # save_pretrained (after the checkpoint round trip below) gathered the shards: the adapter and
    # value head files hold the numbers of the final state, whole
    saved, final = fsdp["saved"], fsdp["checkpoint"]["after_resume"]
    assert any("lora_A" in k for k in saved) and "value_head.summary.weight" in saved
    assert_same(saved, {n: v for n, v in final.items() if n.startswith("value_head.")}, "saved value head")
    lora_final = {n: v for n, v in final.items() if "lora_" in n}
    assert sorted(v.numel() for k, v in saved.items() if "lora_" in k) == sorted(v.numel() for v in lora_final.values())
    for name, value in lora_final.items():  # peft drops the adapter name and the wrapper's prefix in the file
        key = name.removeprefix("model.").replace(".default.", ".")
        assert torch.allclose(saved[key], value, rtol=TOL["rtol"], atol=TOL["atol"]), key


def test_fsdp_full_fine_tuning_with_a_sharded_reference_is_the_one_process_step(fsdp):
    tok = tokenizer()
    ppo, _, _ = ppo_step(llama(tok, peft=False), tok, 1, roll=fsdp["ppo_full"]["roll"])
    assert_same(fsdp["ppo_full"]["params"], trained(ppo.policy))


def test_fsdp_nash_md_lora_step_is_the_one_process_step(fsdp):
    tok = tokenizer()
    trainer, _, _ = nash_step(llama(tok), tok, 1, roll=fsdp["nash_lora"]["roll"], opponent="ema_mixture",
                              ema_decay=0.5)
    state = trainer.policy.state_dict()
    assert_same(fsdp["nash_lora"]["params"], {n: v for n, v in state.items() if "lora_" in n})  # θ and θ̄


def test_fsdp_checkpoint_restores_the_run(fsdp):
    """accelerate's save_state / load_state (sharded DCP files, the trainer registered for its β,
    schedule and shuffle stream): loading brings back the parameters after step 1, and the resumed
    step 2 samples the same rollout and lands on the same parameters as the first step 2."""
    c = fsdp["checkpoint"]
    assert_same(c["restored"], fsdp["ppo_lora"]["params"])
    assert any(not torch.equal(c["after_two"][n], fsdp["ppo_lora"]["params"][n]) for n in c["after_two"])
    assert c["same_rollout"] and c["n_updates"] == 4
    assert_same(c["after_resume"], c["after_two"])
