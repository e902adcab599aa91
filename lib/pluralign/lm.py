"""Language-model plumbing shared by the GPT-2 and Tulu stages: tokenizers, tiny models,
pretraining, loading by path or hub name, and sampling.

The `cpu` profile trains its own base policy: a byte-level BPE tokenizer trained on IMDb reviews
(:func:`pluralign.imdb.train_bpe_tokenizer`) and a small GPT-2-architecture model
(``transformers.GPT2LMHeadModel``, :func:`tiny_gpt2`) pretrained on review passages
(:func:`pack_texts`, :func:`pretrain`), saved with ``save_pretrained`` — our CPU analogue of
``lvwerra/gpt2-imdb``, which the `paper` profile loads through the same :func:`load_causal_lm`.
The word-level tokenizer (:func:`build_word_tokenizer`) serves the tests' tiny models and the
Tulu2 smoke run's stand-in.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

__all__ = ["SPECIAL_TOKENS", "build_word_tokenizer", "tiny_gpt2", "pack_texts", "native_bf16", "pretrain", "perplexity",
           "check_source", "load_causal_lm", "load_tokenizer", "encode_prompts", "sample", "lm_loss", "fused_gelu"]

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


def build_word_tokenizer(words: list[str], add_bos: bool = False):
    """A word-level tokenizer (``tokenizers`` WordLevel, whitespace/punctuation split) over
    ``words`` plus <pad> <bos> <eos> <unk>, wrapped as a ``PreTrainedTokenizerFast``.
    Prompts are left-padded (generation); pad ≠ eos, as TRL's reward scoring expects.

    ``add_special_tokens=True`` (what TRL's RewardTrainer and our reward scoring use) adds nothing
    by default, like GPT-2's tokenizer (the GPT-2 stand-in); ``add_bos=True`` puts <bos> first,
    like Llama / Tulu2's (the Tulu2 stand-in; kept by ``save_pretrained``).  Code that places BOS
    itself (:func:`encode_prompts`, :func:`pack_texts`) passes ``add_special_tokens=False``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(words) - set(specials)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    if add_bos:
        bos = SPECIAL_TOKENS["bos_token"]
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                            special_tokens=[(bos, vocab[bos])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, padding_side="left", **SPECIAL_TOKENS)
    return tok


def tiny_gpt2(tokenizer, n_layer: int = 2, n_embd: int = 128, n_head: int = 4, n_positions: int = 128, seed: int = 0,
              dropout: float = 0.1):
    """A randomly initialised GPT-2-architecture causal LM sized for 2 CPU cores.  Its config's
    bos/eos/pad ids are the tokenizer's (``generate`` stops at the tokenizer's <eos>);
    ``dropout`` is GPT-2's residual, embedding and attention dropout (GPT-2's default 0.1).  Its
    ``gelu_new`` runs as torch's fused tanh GELU (:func:`fused_gelu`; 1.5× faster pretraining)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        n_positions=n_positions, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return fused_gelu(GPT2LMHeadModel(config).float())


def pack_texts(tokenizer, texts: list[str], block: int) -> torch.Tensor:
    """Concatenate <bos> text <eos> for every text and cut into (n_blocks, block) token ids (the
    tail shorter than a block is dropped).  Every text ends with <eos>, so the model learns where
    texts stop."""
    ids = []
    for enc in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:  # long texts are cut into blocks below
        ids += [tokenizer.bos_token_id] + enc + [tokenizer.eos_token_id]
    n = len(ids) // block
    if n == 0:
        raise ValueError(f"corpus of {len(ids)} tokens is shorter than one block of {block}")
    return torch.tensor(ids[: n * block]).view(n, block)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles), so that CPU autocast
    to bfloat16 speeds training up instead of emulating every kernel (:func:`pretrain`)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def lm_loss(model, blocks: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy on (B, T) blocks."""
    return model(input_ids=blocks, labels=blocks).loss


def pretrain(model, train_blocks, val_blocks, steps: int, batch_size: int, lr: float, seed: int,
             eval_every: int = 50, progress: bool = True, bf16: bool = False) -> list[dict]:
    """AdamW with linear warm-up and cosine decay on random batches of packed blocks.
    Returns the training curve: [{step, train_loss, val_loss}] every ``eval_every`` steps
    (val_loss on the first 256 validation blocks).

    ``bf16=True`` runs the training forward and backward passes under CPU bfloat16 autocast
    (weights, optimizer and evaluation stay fp32).  Whether that pays depends on the CPU: on 2 cores
    with native bfloat16 (AVX512-BF16 / AMX) it was 1.25–1.8× faster per step for small GPT-2s; on
    an AVX2-only CPU (AMD EPYC Milan, 2 cores) the same step took 6.3 s instead of 0.37 s in fp32,
    17× slower, since every bf16 kernel is emulated — the pretrain stage's 800 steps would take
    85 minutes instead of 5–8.  Hence a warning when bf16 is asked for on a CPU without it
    (:func:`native_bf16`), and fp32 by default (params.yaml: the same base policy on every x86 CPU
    to float rounding; the runs recorded up to 2026-12-03 used bf16).
    Batches are drawn with a generator seeded by ``seed``; dropout, if the model has any, draws
    from torch's global generator (seed it before calling)."""
    if bf16 and next(model.parameters()).device.type == "cpu" and not native_bf16():
        warnings.warn(f"pretrain.bf16 = true on a CPU without native bfloat16 ({torch.backends.cpu.get_cpu_capability()}, "
                      "no AVX512-BF16 or AMX): autocast emulates it, about 17x slower per step than fp32; "
                      "pretrain.bf16=false (the default) trains in fp32", stacklevel=2)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    curve, running = [], []
    model.train()
    for step in tqdm(range(1, steps + 1), desc="pretrain", disable=not progress, mininterval=5):
        batch = train_blocks[torch.randint(len(train_blocks), (batch_size,), generator=g)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if step % eval_every == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                val = float(lm_loss(model, val_blocks[:256]))
            model.train()
            curve.append({"step": step, "train_loss": sum(running) / len(running), "val_loss": val})
            running = []
    model.eval()
    return curve


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch_size: int = 64) -> float:
    """exp(mean next-token cross-entropy) over every predicted token of the (N, T) blocks."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        b = blocks[i:i + batch_size]
        total += float(lm_loss(model, b)) * b.shape[0] * (b.shape[1] - 1)
        n += b.shape[0] * (b.shape[1] - 1)
    return math.exp(total / max(n, 1))


def check_source(name_or_path: str, what: str) -> None:
    """Local paths must exist (and their safetensors files be whole); hub names need the hub,
    which offline runs do not have."""
    p = Path(name_or_path)
    # a hub id is "name" or "owner/name"; anything with more parts (or ./, ~, /) is a path
    looks_local = p.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1 or p.exists()
    if looks_local and not p.exists():
        raise FileNotFoundError(f"{what} path {name_or_path!r} does not exist")
    if looks_local:
        check_safetensors(p, what)  # a truncated shard among several is named here, not deep in from_pretrained
    if not looks_local and os.environ.get("HF_HUB_OFFLINE") == "1":
        # a hub id offline is fine only if it is already in the local cache
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(name_or_path, "config.json") is None:
            raise FileNotFoundError(f"{what} {name_or_path!r} is neither a local path nor in the offline hub cache")


def load_tokenizer(name_or_path: str):
    """Tokenizer by local path or hub id; gives GPT-2-style tokenizers a distinct pad token."""
    from transformers import AutoTokenizer

    check_source(name_or_path, "tokenizer")
    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": "<pad>"})
    tok.padding_side = "left"
    return tok


def load_causal_lm(name_or_path: str, tokenizer=None, dtype=torch.float32):
    """Causal LM by local path (``save_pretrained`` output) or hub id (paper profile), with GPT-2's
    ``gelu_new`` as torch's fused tanh GELU (:func:`fused_gelu`; other architectures untouched)."""
    from transformers import AutoModelForCausalLM

    check_source(name_or_path, "model")
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return fused_gelu(model).eval()


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, L) ids with <bos> first, and the attention mask."""
    ids = [[tokenizer.bos_token_id] + x for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    L = max(map(len, ids))
    out = torch.full((len(ids), L), tokenizer.pad_token_id)
    mask = torch.zeros(len(ids), L, dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, L - len(x):] = torch.tensor(x)
        mask[i, L - len(x):] = 1
    return out, mask


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, batch_size: int = 256, seed: int = 0, progress: bool = False,
           return_info: bool = False):
    """Sample one continuation per prompt (KV-cached); text up to the first <eos>, stripped.
    ``return_info=True`` also returns ``{"new_tokens": (N,) tokens generated before the first <eos>
    (or all of them), "stopped": (N,) bool, whether an <eos> came within max_new_tokens}`` — what
    tells a response that ended from one cut at the cap.

    Plain sampling (top_p = 1) on CPU goes through :func:`pluralign.sampling.mixture_sample` at
    β = 0, the sampler of PPO's rollouts (one uniform per row and token from a generator seeded by
    ``seed``; finished rows leave the batch); top-p, or a GPU, through ``model.generate`` after
    ``torch.manual_seed(seed)``.  Why bypass ``generate`` on CPU: its multinomial draw cost ~11 ms
    per token at batch 64 and it runs every row to the longest one's end — the label stage's 8,000
    answers of 16 ± 14 tokens under a 48-token cap take a third of the time
    (``benchmarks/bench_sampler.py``: 7.1 s vs 21.6 s for 2,000 answers, one thread).  The two
    paths draw different tokens from the same seed (inverse CDF vs multinomial), the same
    distribution."""
    from .sampling import mixture_sample, truncate_after_eos

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    own = top_p == 1.0 and next(model.parameters()).device.type == "cpu"
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out, lengths, stopped = [], [], []
    for i in tqdm(range(0, len(prompts), batch_size), desc="sample", disable=not progress, mininterval=5):
        ids, mask = encode_prompts(tokenizer, prompts[i : i + batch_size])
        if limit is not None and ids.shape[1] + max_new_tokens > limit:
            raise ValueError(f"a prompt of {ids.shape[1]} tokens (with <bos>) + max_new_tokens={max_new_tokens} exceeds "
                             f"the model's {limit} positions")
        if own:
            new, _ = mixture_sample(model, model, ids, mask, 0.0, max_new_tokens, eos, pad, temperature, generator)
        else:
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                 top_p=top_p, top_k=0, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos)
            new, _ = truncate_after_eos(gen[:, ids.shape[1]:], eos, pad)
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
        is_eos = new == eos
        ended = is_eos.any(1)
        lengths.append(torch.where(ended, is_eos.int().argmax(1), torch.full_like(ended, new.shape[1], dtype=torch.long)))
        stopped.append(ended)
    texts = [t.strip() for t in out]
    if not return_info:
        return texts
    cat = (lambda xs, dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dt))  # noqa: E731
    return texts, {"new_tokens": cat(lengths, torch.long), "stopped": cat(stopped, torch.bool)}


def check_safetensors(path, what: str = "model") -> list:
    """Check the weights of a local model folder (or one ``.safetensors`` file) before loading:
    every ``*.safetensors`` file is opened with ``safetensors.safe_open`` (which reads its header
    and checks that the file covers every tensor it declares), and every shard that a
    ``*.safetensors.index.json`` lists must exist.  A failure raises ValueError with one line
    naming the file (empty, truncated / not safetensors, missing, or a bad index).  Paths that are
    not local folders or files (hub ids) are left to :func:`check_source`.  Returns the files checked."""
    import json as _json

    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if p.is_file():
        files = [p] if p.name.endswith(".safetensors") else []
    elif p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        for index in sorted(p.glob("*.safetensors.index.json")):
            try:
                listed = sorted(set(_json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
                raise ValueError(f"{what} index {index} is not a JSON object with a weight_map "
                                 f"({type(e).__name__})") from None
            for name in listed:
                if not (p / name).is_file():
                    raise ValueError(f"{what} file {p / name} (listed in {index.name}) is missing")
    else:
        return []
    for f in files:
        if f.stat().st_size == 0:
            raise ValueError(f"{what} file {f} is empty")
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except (SafetensorError, OSError, ValueError) as e:
            why = " ".join(str(e).split())[:160]
            raise ValueError(f"{what} file {f} is truncated or not a safetensors file ({why})") from None
    return files


def fused_gelu(model):
    """Swap GPT-2's ``gelu_new`` modules (transformers' ``NewGELUActivation``: the tanh
    approximation written as five Python-level tensor ops) for torch's fused tanh GELU
    (``GELUTanh``), in place; returns the model.  The same function up to float rounding
    (1.5e-7 at most on N(0, 9) inputs) and 7× faster on CPU: a tenth of a cpu-profile PPO or
    Nash-MD run went to it.  The saved config keeps ``gelu_new``; models without it, and objects
    that are not ``nn.Module``s, are untouched."""
    from transformers.activations import ACT2FN, NewGELUActivation

    if not isinstance(model, torch.nn.Module):  # e.g. a view onto a shared backbone (pluralign.lora): left alone
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(module, name, ACT2FN["gelu_pytorch_tanh"])
    return model
