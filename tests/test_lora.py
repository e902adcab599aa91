"""LoRA reward models, their EM mixture on one shared base, the LoRA policy under our PPO, the
accelerate configs, the Tulu2 PPO script and the 7B benchmark at tiny size — all on a tiny
Llama-architecture stand-in built here (HF_HUB_OFFLINE=1, CPU)."""
import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pluralign import em, lm, lora, soups
from pluralign import reward_models as rm
from pluralign.ppo import PPO, PPOConfig, response_logprobs_and_values
from pluralign.preferences import PreferencePairs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared 2-core box
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tok = lm.build_word_tokenizer(soups.standin_vocabulary(), add_bos=True)  # as notebook 13's stand-in
    lora.tiny_llama(tok, hidden_size=32, n_layer=2, n_head=4, n_kv_head=2, intermediate_size=64).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), lm.load_tokenizer(str(path))


def two_group_pairs(n_users=4, per_user=16, seed=0):
    """Group 0 (even users) prefers technical words, group 1 simple ones: opposite preferences."""
    rng = random.Random(seed)
    group = torch.tensor([u % 2 for u in range(n_users)])
    prompt, chosen, rejected, user = [], [], [], []
    for u in range(n_users):
        for _ in range(per_user):
            tech = " ".join(rng.choice(soups.TECHNICAL) for _ in range(4)) + " ."
            simple = " ".join(rng.choice(soups.SIMPLE) for _ in range(4)) + " ."
            prompt.append(soups.tulu_prompt(rng.choice(soups.ASKS).format(t=rng.choice(soups.TOPICS))))
            chosen.append(tech if group[u] == 0 else simple)
            rejected.append(simple if group[u] == 0 else tech)
            user.append(u)
    return PreferencePairs(prompt, chosen, rejected, torch.tensor(user), n_users, group)


def test_lora_reward_model_trains_with_reward_trainer(base):
    path, tok = base
    model = lora.lora_reward_model(path, tok, r=8, alpha=32, dropout=0.1, seed=0)
    assert type(model).__name__ == "PeftModelForSequenceClassification"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".score.modules_to_save." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pairs = two_group_pairs()
    majority = pairs.subset((pairs.group[pairs.user] == 0).nonzero().flatten())
    rm.train_reward_model(model, tok, majority, epochs=3, lr=1e-2, batch_size=16, bf16=True)  # a PeftModel, as is
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved == trainable  # the base stays frozen
    assert model.forward.__func__ is type(model).forward  # the Trainer's bf16 autocast wrapper was removed
    assert rm.accuracy_by_group(model, tok, pairs)[0] > 0.95


def test_em_over_lora_adapters_on_one_base(base, tmp_path):
    path, tok = base
    pairs = two_group_pairs()
    fit = em.mixture_em(lambda: lora.LoraRewardMixture(path, tok, 2, epochs=2, lr=1e-2, batch_size=16,
                                                       max_length=64, seed=0),
                        pairs, n_init=1, init="round_robin", max_iter=3, seed=0)
    assert em.purity(fit.assignment, pairs.group) == 1.0
    mix = fit.model
    assert len({id(v.model) for v in mix.models}) == 1  # K reward models, one base in memory
    for k in range(2):
        mine = pairs.subset((fit.assignment[pairs.user] == k).nonzero().flatten())
        assert float((rm.pair_margins(mix.models[k], tok, mine) > 0).float().mean()) > 0.9

    # state / load_state restore every adapter; saved adapters reload to the same scores
    margins = [rm.pair_margins(m, tok, pairs) for m in mix.models]
    state = mix.state()
    mix.fit(pairs, torch.nn.functional.one_hot(1 - fit.assignment, 2).double())  # move both adapters
    assert not torch.allclose(rm.pair_margins(mix.models[0], tok, pairs), margins[0])
    mix.load_state(state)
    for m, before in zip(mix.models, margins):
        torch.testing.assert_close(rm.pair_margins(m, tok, pairs), before)
    folders = mix.save(tmp_path)
    loaded = lora.load_reward_adapters(path, tok, folders)
    for m, before in zip(loaded, margins):
        torch.testing.assert_close(rm.pair_margins(m, tok, pairs), before, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in loaded[0].model.parameters())
    with pytest.raises(ValueError, match="hard assignments only"):
        mix.fit(pairs, torch.full((4, 2), 0.5))


def test_saved_adapters_name_the_published_base_not_the_loading_path(base, tmp_path):
    """A stage loads its base from a staging folder that is gone once it publishes: the saved
    adapters' configs (and model card) name base_name instead, the same bytes on every save; the
    model in memory keeps its own record, and the adapters load back on the base."""
    import json

    path, tok = base
    mix = lora.LoraRewardMixture(path, tok, 2, seed=0)
    before = {n: c.base_model_name_or_path for n, c in mix.model.peft_config.items()}
    first = mix.save(tmp_path / "a", base_name="data/tulu2/base")
    again = mix.save(tmp_path / "b", base_name="data/tulu2/base")
    for f, g in zip(first, again):
        config = json.loads((Path(f) / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "data/tulu2/base"
        assert (Path(f) / "adapter_config.json").read_bytes() == (Path(g) / "adapter_config.json").read_bytes()
    assert all(path not in p.read_text() for p in (tmp_path / "a").rglob("*") if p.suffix in (".json", ".md"))
    assert {n: c.base_model_name_or_path for n, c in mix.model.peft_config.items()} == before
    assert mix.model.get_base_model().config._name_or_path == path
    plain = mix.save(tmp_path / "c")  # no base_name: peft's own record, the loading path
    assert json.loads((Path(plain[0]) / "adapter_config.json").read_text())["base_model_name_or_path"] == path
    # LoRA's target_modules (a set, iterated in hash-seed order) written sorted: the same bytes in every process
    modules = json.loads((Path(first[0]) / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) >= 2
    assert all(isinstance(c.target_modules, set) for c in mix.model.peft_config.values())  # restored
    assert len(lora.load_reward_adapters(path, tok, first)) == 2


def test_tulu2_script_records_a_base_inside_the_repository_relative_to_it():
    module = _script()
    assert module.portable(str(ROOT / "params.yaml")) == "params.yaml"
    assert module.portable("allenai/tulu-2-7b") == "allenai/tulu-2-7b"  # a hub id stays as given


def test_lora_policy_takes_two_ppo_steps_against_the_adapter_free_base(base):
    from transformers import AutoModelForCausalLM

    path, tok = base
    policy = lora.lora_policy(path, tok, r=4, alpha=8, seed=0)
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    ppo = PPO(policy, tok, PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=2, learning_rate=1e-2,
                                     max_new_tokens=6, seed=0))
    assert ppo.ref_model is None and all("lora_" in n for n, p in policy.named_parameters() if p.requires_grad)
    ids, mask = lm.encode_prompts(tok, soups.alpaca_prompts(soups.make_standin(
        Path(path) / "data", n_per_dim=2, n_prompts=4, n_eval=1)["prompts"]))
    for _ in range(2):
        roll = ppo.rollout(ids, mask)
        stats = ppo.step(roll, torch.arange(4.0))
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    Q, m = roll.query_ids.shape[1], roll.response_mask
    with torch.no_grad():
        lp_base, _, _ = response_logprobs_and_values(reference, None, roll.input_ids, roll.attention_mask, Q, 1.0)
        lp_policy, _, _ = response_logprobs_and_values(policy, None, roll.input_ids, roll.attention_mask, Q, 1.0)
    torch.testing.assert_close(ppo.ref_logprobs(roll.input_ids, roll.attention_mask, Q)[m], lp_base[m])
    assert float((lp_policy - lp_base)[m].abs().max()) > 1e-4  # the adapters moved the policy


def test_checkpointing_works_in_eval_mode_and_keeps_gradients(base, monkeypatch):
    path, tok = base
    plain = lora.lora_policy(path, tok, r=4, alpha=8, seed=1)
    ckpt = lora.lora_policy(path, tok, r=4, alpha=8, seed=1, gradient_checkpointing=True)
    calls = []
    real = lora.checkpoint
    monkeypatch.setattr(lora, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids, mask = lm.encode_prompts(tok, ["<|user|>\nexplain soap . \n<|assistant|>\nthe sun is big ."] * 2)
    grads = []
    for model in (plain, ckpt):
        lp, _, _ = response_logprobs_and_values(model, None, ids, mask, 4, 1.0)  # eval mode, as PPO runs it
        lp.sum().backward()
        grads.append([p.grad for n, p in model.named_parameters() if p.requires_grad])
    assert len(calls) == 2  # both decoder layers of the checkpointed model, none of the plain one
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        ckpt.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False,
                      pad_token_id=tok.pad_token_id)
    assert len(calls) == 2  # no checkpointing without gradients


def test_reward_model_can_share_the_policy_base_weights(base):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path, tok = base
    policy_base = AutoModelForCausalLM.from_pretrained(path)
    reference = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    with torch.device("meta"):
        shared = AutoModelForSequenceClassification.from_config(reference.config)
    lora.share_backbone(shared, policy_base)
    shared.score = reference.score
    ptrs = {p.data_ptr() for p in policy_base.model.parameters()}
    assert all(p.data_ptr() in ptrs for p in shared.model.parameters())
    enc = tok(["the sun is big .", "<|user|>\nq \n<|assistant|>\nthermodynamics ."], return_tensors="pt",
              padding=True, padding_side="right")
    with torch.no_grad():
        torch.testing.assert_close(shared.eval()(**enc).logits, reference(**enc).logits)


def test_quantised_loading_needs_bitsandbytes_and_a_gpu(base):
    path, tok = base
    with pytest.raises(ValueError, match="load_in_bits must be None, 4 or 8"):
        lora.lora_reward_model(path, tok, load_in_bits=3)
    try:
        import bitsandbytes  # noqa: F401
        expected = RuntimeError if not torch.cuda.is_available() else None
    except ImportError:
        expected = ImportError
    if expected is not None:
        with pytest.raises(expected, match="bitsandbytes|CUDA GPU"):
            lora.lora_policy(path, tok, load_in_bits=8)


@pytest.mark.parametrize("name, kind, n", [("single_gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 2), ("fsdp", "FSDP", 2),
                                           ("deepspeed_zero3", "DEEPSPEED", 8)])
def test_accelerate_configs_parse(name, kind, n, monkeypatch):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin, prepare_multi_gpu_env

    path = ROOT / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig) and config.distributed_type.value == kind
    assert config.num_processes == n and config.mixed_precision == "bf16"
    # what `accelerate launch --config_file …` makes of it (parsing and merging only, nothing starts)
    args = launch_command_parser().parse_args(["--config_file", str(path), "scripts/tulu2_ppo.py", "--params", "p"])
    args, _, _ = _validate_launch_command(args)
    assert (args.multi_gpu, args.use_fsdp, args.use_deepspeed) == (kind == "MULTI_GPU", kind == "FSDP", kind == "DEEPSPEED")
    if kind == "FSDP":
        for key, value in prepare_multi_gpu_env(args).items():
            monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
        # whole weights on every process: the Tulu2 scripts load reward models accelerate never prepares
        assert plugin.cpu_ram_efficient_loading is False
    if kind == "DEEPSPEED":  # for TRL's trainers (scripts/trl_maxmin.py); deepspeed itself is not installed here
        assert args.zero_stage == 3 and str(args.zero3_init_flag).lower() == "true"


PARAMS = """tulu2:
  profile: cpu
  base_model: allenai/tulu-2-7b
  raw_data: data/raw
  pairs: alpaca_eval
  soups_path: ""
  soups_pattern: "{dim}.json"
  ppo_prompts: ""
  eval_prompts: ""
  majority: P1A
  minority: P1B
  max_new_tokens: 6
  temperature: 1.0
  dtype: float32
  load_in_bits: null
  accelerate_config: configs/accelerate/single_gpu.yaml
  judge: rule
  judge_model: ""
tulu_align:
  seeds: [0, 1]
  methods: [maxmin]
  steps: 2
  batch_size: 4
  mini_batch_size: 2
  ppo_epochs: 1
  lr: 0.001
  kl_coef: 0.05
  kl_target: 0.5
  kl_horizon: 100
  lr_schedule: cosine
  top_p: 0.95
  n_standardise: 4
  n_prompts: 0
  lora_r: 4
  lora_alpha: 8
  gradient_checkpointing: true
  n_boot: 200
  optim: adamw_torch_fused
"""


def _script():
    spec = importlib.util.spec_from_file_location("tulu2_ppo", ROOT / "scripts" / "tulu2_ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tulu2_ppo_script_runs_two_steps(base, tmp_path):
    import json

    path, tok = base
    folders = lora.LoraRewardMixture(path, tok, 2, seed=0).save(tmp_path / "rms")
    data = soups.make_standin(tmp_path / "data", n_per_dim=2, n_prompts=16, n_eval=1)
    (tmp_path / "params.yaml").write_text(PARAMS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(ROOT / "scripts" / "tulu2_ppo.py"), "--params", str(tmp_path / "params.yaml"),
           "--rule", "argmin", "--base", path, "--rewards", *folders, "--prompts", str(data["prompts"]), "--out", str(tmp_path / "out"),
           "--seed", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2] and all(h["group"] in (0, 1) for h in history)
    # the paper profile's settings reach the trainer: the cosine schedule decays, the controller moves beta
    assert history[0]["learning_rate"] == pytest.approx(0.001) and history[1]["learning_rate"] == pytest.approx(0.0005)
    assert history[1]["kl_coef"] != history[0]["kl_coef"]
    policy_config = json.loads((tmp_path / "out" / "policy" / "adapter_config.json").read_text())
    assert policy_config["base_model_name_or_path"] == path  # outside the repository: as given
    assert (tmp_path / "out" / "policy" / "value_head.safetensors").exists()
    assert not list((tmp_path / "out").rglob("*.pt"))  # no pickles
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["processes"] == 1 and len(run["reward_mean"]) == 2


def test_tulu2_ppo_params_are_checked(tmp_path):
    script = _script()
    (tmp_path / "p.yaml").write_text(PARAMS.replace("methods: [maxmin]", "methods: [fastest]"))
    with pytest.raises(script.ParamError, match=r"^tulu_align\.methods = \['fastest'\]: has entry"):
        script.read_params(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text(PARAMS.replace("mini_batch_size: 2", "mini_batch_size: 3"))
    with pytest.raises(script.ParamError, match="must divide batch_size=4"):
        script.read_params(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text(PARAMS.replace("minority: P1B", "minority: P1A"))
    with pytest.raises(script.ParamError, match="must differ from majority"):
        script.read_params(tmp_path / "p.yaml")


def test_tiny_benchmark_completes(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_tulu_7b", ROOT / "benchmarks" / "bench_tulu_7b.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    report = bench.main(["--size", "tiny", "--cpu", "--steps", "1", "--warmup", "0", "--batch-size", "4",
                         "--new-tokens", "4", "--out", str(out)])
    assert out.exists() and report["reward_backbone_shares_policy_weights"]
    assert report["step_seconds"] > 0 and 0 < report["update_mfu"] and report["generated_tokens_per_second"] > 0


def _run_script(script, tmp_path, folders, prompts, out, params, *extra, launch=()):
    (tmp_path / "params.yaml").write_text(params)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, *launch, str(ROOT / "scripts" / script), "--params", str(tmp_path / "params.yaml"),
           "--base", folders[0], "--rewards", *folders[1], "--prompts", str(prompts), "--out", str(out), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_tulu2_ppo_script_with_two_processes_checkpoints_and_resumes(base, tmp_path):
    """Two CPU processes (torchrun, gloo): the script's PPO runs under DDP (the policy prepared by
    accelerate; the hand-written gradient hook is gone), writes accelerate checkpoints holding only
    the trainable tensors, and --resume continues from step 2 to 3.  (torchrun is what ``accelerate
    launch`` runs on GPUs; on CPU it starts several processes only through mpirun with a hostfile,
    else one — measured: ``--cpu --num_processes 2`` gave a 1-process run.)"""
    import json

    from safetensors.torch import load_file

    path, tok = base
    folders = lora.LoraRewardMixture(path, tok, 2, seed=0).save(tmp_path / "rms")
    data = soups.make_standin(tmp_path / "data", n_per_dim=2, n_prompts=16, n_eval=1)
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]
    params = PARAMS.replace("lr_schedule: cosine", "lr_schedule: constant")
    _run_script("tulu2_ppo.py", tmp_path, (path, folders), data["prompts"], tmp_path / "out", params,
                "--checkpoint-every", "1", "--cpu", launch=launch)
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["processes"] == 2 and run["distributed_type"] == "DistributedType.MULTI_CPU"
    weights = load_file(str(tmp_path / "out" / "checkpoint" / "model.safetensors"))
    assert weights and all("lora_" in k or "value_head" in k for k in weights)  # not the frozen base
    _run_script("tulu2_ppo.py", tmp_path, (path, folders), data["prompts"], tmp_path / "out",
                params.replace("steps: 2", "steps: 3"), "--resume", "--cpu", launch=launch)
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    assert history[2]["seconds"] < history[1]["seconds"]  # step 3 ran in the resumed process


def test_tulu2_nash_md_script_runs_two_steps(base, tmp_path):
    import json

    path, tok = base
    folders = lora.LoraRewardMixture(path, tok, 2, seed=0).save(tmp_path / "rms")
    data = soups.make_standin(tmp_path / "data", n_per_dim=2, n_prompts=16, n_eval=1)
    _run_script("tulu2_nash_md.py", tmp_path, (path, folders), data["prompts"], tmp_path / "out", PARAMS,
                "--rule", "argmin", "--beta", "0.5", "--tau", "0.05", "--seed", "1", "--cpu")
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2] and all(h["group"] in (0, 1) for h in history)
    assert all(0 < h["global_preference"] < 1 and h["grad_norm"] > 0 for h in history)
    assert (tmp_path / "out" / "policy" / "adapter_config.json").exists()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["nash_md"] == {"beta": 0.5, "tau": 0.05, "opponent": "mixture", "ema_decay": None}
    assert run["reward_backbone_shares_policy_weights"]


def test_tulu2_nash_md_script_refuses_bad_values(base, tmp_path):
    path, _ = base
    (tmp_path / "params.yaml").write_text(PARAMS)
    script = ROOT / "scripts" / "tulu2_nash_md.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script), "--params", str(tmp_path / "params.yaml"), "--base", path,
                           "--rewards", "x", "--prompts", "p", "--out", str(tmp_path), "--beta", "1.5"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0 and done.stderr.strip().splitlines()[-1] == "error: beta must be in [0, 1], got 1.5"


# ---- dropout: active in reward training (LoRA only), off in PPO --------------------------------
def _dropout_calls(model):
    """Register a pre-hook on every nn.Dropout: returns the list of (name, p, training) per call."""
    calls = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Dropout):
            m.register_forward_pre_hook(lambda mod, args, _n=name: calls.append((_n, mod.p, mod.training)))
    return calls


def test_reward_training_keeps_lora_dropout_on_and_backbone_dropout_off(base, tmp_path):
    """tulu_reward.lora_dropout acts: during RewardTrainer's steps each LoRA dropout has the
    configured p in training mode, while TRL's disable_dropout still zeroes the backbone's (GPT-2
    has backbone dropout; the Llama stand-in has none), and p survives for the next M-step."""
    path, tok = base
    gpt2 = tmp_path / "gpt2"
    lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, n_positions=256).save_pretrained(gpt2)
    pairs = two_group_pairs(n_users=2, per_user=4)
    for where, targets in ((path, None), (str(gpt2), ["c_attn"])):
        model = lora.lora_reward_model(where, tok, r=4, alpha=8, dropout=0.1, target_modules=targets, seed=0)
        calls = _dropout_calls(model)
        rm.train_reward_model(model, tok, pairs, epochs=1, lr=1e-3, batch_size=8, max_length=256)
        adapter = [c for c in calls if ".lora_dropout." in c[0] + "."]
        backbone = [c for c in calls if ".lora_dropout." not in c[0] + "."]
        assert adapter and all(p == 0.1 and training for _, p, training in adapter)
        assert all(p == 0 for _, p, _ in backbone)
        assert bool(backbone) == (targets is not None)  # GPT-2's embedding/attention/residual dropouts
        assert all(m.p == 0.1 for n, m in model.named_modules() if n.endswith("lora_dropout.default"))
        assert not model.training  # scoring afterwards: dropout inert


def test_policy_lora_has_no_dropout_and_ppo_runs_in_eval_mode(base, root):
    """PPO's ratio π_θ/π_old needs old and new log-probs from one function, so the policy runs in
    eval mode (as TRL's PPO disables dropout): a policy LoRA dropout could never act, so the
    tulu_align.lora_dropout param is gone and the policy's LoRA has p = 0."""
    import inspect

    import yaml

    from pluralign.checks import SCHEMAS

    params = yaml.safe_load((root / "params.yaml").read_text())
    assert "lora_dropout" not in params["tulu_align"] and "lora_dropout" not in SCHEMAS["tulu_align"]
    assert "lora_dropout" in params["tulu_reward"] and "lora_dropout" in SCHEMAS["tulu_reward"]
    assert "dropout" not in inspect.signature(lora.lora_policy).parameters
    path, tok = base
    policy = lora.lora_policy(path, tok, r=4, alpha=8, seed=0)
    assert policy.peft_config["default"].lora_dropout == 0
    modes = []
    for name, m in policy.named_modules():
        if name.endswith("lora_A.default"):
            m.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    ppo = PPO(policy, tok, PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=3))
    ppo.step(ppo.rollout(*lm.encode_prompts(tok, ["explain soap .", "the sun"])), torch.ones(2))
    assert modes and not any(modes)


# ---- one builder for the script and the benchmark; a shared backbone -------------------------
class _Built(Exception):
    pass


def _structure(policy, views):
    """Module tree (names, types, checkpointed layers) and LoRA configs, sizes aside."""
    def tree(m):
        return [(n, type(x).__name__, "forward" in vars(x)) for n, x in m.named_modules()]

    def configs(m):
        return {k: (sorted(c.target_modules), c.lora_dropout, sorted(set(c.modules_to_save or [])),
                    getattr(c.task_type, "value", c.task_type)) for k, c in m.peft_config.items()}

    return tree(policy), tree(views[0].model), configs(policy), configs(views[0].model), [v.name for v in views]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_tulu_7b", ROOT / "benchmarks" / "bench_tulu_7b.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_script_and_benchmark_build_their_models_with_one_function(base, tmp_path, monkeypatch):
    path, tok = base
    folders = lora.LoraRewardMixture(path, tok, 2, seed=0).save(tmp_path / "rms")
    data = soups.make_standin(tmp_path / "data", n_per_dim=2, n_prompts=4, n_eval=1)
    (tmp_path / "params.yaml").write_text(PARAMS)
    built, real = [], lora.ppo_models

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        raise _Built

    monkeypatch.setattr(lora, "ppo_models", spy)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(_Built):
            _script().main(["--params", str(tmp_path / "params.yaml"), "--base", path, "--rewards", *folders,
                            "--prompts", str(data["prompts"]), "--out", str(tmp_path / "out"), "--cpu"])
        with pytest.raises(_Built):
            _bench().main(["--size", "tiny", "--cpu", "--steps", "1", "--warmup", "0",
                           "--out", str(tmp_path / "b.json")])
    finally:
        torch.set_num_threads(threads)
    (p1, v1), (p2, v2) = built
    assert _structure(p1, v1) == _structure(p2, v2)
    assert lora.backbone_shared(p1, v1) and lora.backbone_shared(p2, v2)


def test_shared_backbone_gives_the_rewards_of_separate_models(base, tmp_path):
    import shutil

    path, tok = base
    mix = lora.LoraRewardMixture(path, tok, 2, seed=0)
    with torch.no_grad():  # non-zero LoRA B, so that the adapters matter
        for n, p in mix.model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.3)
    folders = mix.save(tmp_path / "rms")
    policy, shared = lora.ppo_models(path, tok, folders, r=4, alpha=8, seed=0)
    separate = lora.load_reward_adapters(path, tok, folders)
    # one copy of the base: every backbone tensor of the reward model is one of the policy base's
    ptrs = {p.data_ptr() for n, p in policy.get_base_model().named_parameters() if "lora_" not in n}
    rm_backbone = [p for n, p in shared[0].model.named_parameters() if "lora_" not in n and ".score." not in n]
    assert rm_backbone and all(p.data_ptr() in ptrs for p in rm_backbone)
    assert lora.backbone_shared(policy, shared) and not lora.backbone_shared(policy, separate)
    assert not any(p.requires_grad for p in shared[0].model.parameters())
    pairs = two_group_pairs()
    margins = [rm.pair_margins(s, tok, pairs) for s in shared]
    for m, u in zip(margins, separate):
        torch.testing.assert_close(m, rm.pair_margins(u, tok, pairs), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(margins[0], margins[1])
    # the policy is the one lora_policy builds, and its PPO updates leave the rewards alone
    alone = lora.lora_policy(path, tok, r=4, alpha=8, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), alone.state_dict().values()))
    ppo = PPO(policy, tok, PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1, learning_rate=1e-2,
                                     max_new_tokens=3))
    ppo.step(ppo.rollout(*lm.encode_prompts(tok, ["explain soap .", "the sun"])), torch.tensor([1.0, -1.0]))
    assert not all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), alone.state_dict().values()))
    for m, s in zip(margins, shared):
        assert torch.equal(rm.pair_margins(s, tok, pairs), m)
    # another reward base: two copies, same rewards
    shutil.copytree(path, tmp_path / "other")
    _, apart = lora.ppo_models(path, tok, folders, r=4, alpha=8, seed=0, reward_base=str(tmp_path / "other"))
    assert not lora.backbone_shared(policy, apart)
    torch.testing.assert_close(rm.pair_margins(apart[0], tok, pairs), margins[0], rtol=1e-6, atol=1e-6)


def test_docstrings_say_when_the_seed_matters():
    assert "new head seeded" not in lora.lora_reward_model.__doc__


def test_standin_tokenizer_puts_bos_first_once(base):
    """The Tulu2 stand-in's saved tokenizer adds <bos> as Llama's does: reward texts start with it
    (TRL's tokenisation), and prompts for generation still carry exactly one."""
    path, tok = base
    ids = rm._processed(tok, two_group_pairs(n_users=2, per_user=1))["chosen_ids"]
    assert all(x[0] == tok.bos_token_id and x[1] != tok.bos_token_id and x[-1] == tok.eos_token_id for x in ids)
    q, mask = lm.encode_prompts(tok, ["explain soap .", "the sun"])
    first = [row[m.bool()][:2].tolist() for row, m in zip(q, mask)]
    assert all(f[0] == tok.bos_token_id and f[1] != tok.bos_token_id for f in first)


def test_pairs_longer_than_max_length_are_refused_not_dropped(base):
    path, tok = base
    pairs = two_group_pairs(n_users=2, per_user=4)
    long = pairs.subset(torch.arange(pairs.n_pairs))
    long.chosen[0] = " ".join(["photosynthesis"] * 200)
    mix = lora.LoraRewardMixture(path, tok, 1, max_length=64, seed=0)
    with pytest.raises(ValueError, match=r"1 of 8 pairs have a reward text longer than max_length=64 tokens, which "
                                         r"TRL's RewardTrainer would drop"):
        mix.fit(long, torch.ones(2, 1, dtype=torch.float64))
    mix.fit(pairs, torch.ones(2, 1, dtype=torch.float64))
    assert mix.trained_pairs == [{"rm0": 8}]  # what RewardTrainer really trained on


def test_features_are_what_the_score_heads_read(base):
    path, tok = base
    pairs = two_group_pairs(n_users=2, per_user=3)
    mix = lora.LoraRewardMixture(path, tok, 2, seed=0)
    X = mix.features(pairs.prompt, pairs.chosen, batch_size=4)
    assert X.shape == (6, 32)
    w = torch.randn(2, 32, generator=torch.Generator().manual_seed(1)).float()
    mix.set_heads(w)
    for k, view in enumerate(mix.models):
        assert torch.allclose(rm.score(view, tok, pairs.prompt, pairs.chosen), X @ w[k], atol=1e-5)
    with pytest.raises(ValueError, match=r"expected \(2, hidden\) head weights"):
        mix.set_heads(w[:1])
