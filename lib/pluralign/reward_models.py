"""Neural Bradley–Terry reward models: TRL's RewardTrainer for the fitting, plus the mixture
that lets the EM kernel (:mod:`pluralign.em`) cluster users with neural M-steps.

A reward model is a ``*ForSequenceClassification`` with one output, reading
``prompt + response + eos`` (TRL's standard-format convention) and pooled at the last non-pad
token (so pad must differ from eos).  It is initialised from the base policy's backbone, as in
the paper's GPT-2 experiment.

Tokenisation is TRL 1.16 RewardTrainer's, for training and for scoring alike: the text above
through ``tokenizer(text)`` with the tokenizer's own special tokens, i.e. <s> first for a Llama /
Tulu2 tokenizer, nothing added for GPT-2's (and for the `cpu` profile's word-level tokenizer).
"""
from __future__ import annotations

import copy
import tempfile
import weakref

import torch
import torch.nn.functional as F

from .preferences import PreferencePairs

__all__ = ["reward_text", "check_pad", "encode", "token_ids", "right_padded", "load_reward_model", "length_sorted_logits",
           "train_reward_model", "score", "pair_margins", "accuracy_by_group", "NeuralRewardMixture"]

CHUNK_ROWS = 32  # rows per length-sorted chunk of a RewardTrainer batch (length_sorted_logits)


def reward_text(tokenizer, prompt: str, response: str) -> str:
    """The text a reward model reads: prompt + response + eos, eos appended unless the text already
    ends with it (as RewardTrainer builds it); special tokens such as BOS come from :func:`encode`."""
    text = prompt + response
    return text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token


def check_pad(tokenizer, what: str = "reward model") -> None:
    """Sequence classifiers pool at the last non-pad token: with pad == eos that is the token before
    the final eos.  Refuse it with the fix (a distinct pad token) rather than score the wrong token."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            f"{what}: the tokenizer's pad token ({tokenizer.pad_token!r}) must differ from eos "
            f"({tokenizer.eos_token!r}): the classifier pools at the last non-pad token; add a distinct one, "
            "tokenizer.add_special_tokens({'pad_token': '<pad>'}), and resize the model's embeddings "
            "(pluralign.lm.load_tokenizer does the first)")


def encode(tokenizer, texts: list[str], **kwargs):
    """Token ids of reward / pairwise texts as TRL's RewardTrainer makes them: ``tokenizer(text)``
    with the tokenizer's own special tokens (BOS for Llama; none for GPT-2)."""
    return tokenizer(texts, **kwargs)


_TOKEN_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TOKEN_CACHE_TEXTS = 200_000  # texts remembered per tokenizer before the memo starts afresh


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """:func:`encode`'s ``input_ids`` of each text, memoised per tokenizer (an EM fit scores the same
    pairs under every model at every iteration: re-tokenising them was a tenth of the reward stage)."""
    memo = _TOKEN_IDS.setdefault(tokenizer, {}).setdefault(len(tokenizer), {})  # a grown vocabulary: a new memo
    new = [t for t in dict.fromkeys(texts) if t not in memo]
    if new:
        if len(memo) + len(new) > _TOKEN_CACHE_TEXTS:
            memo.clear()
        memo.update(zip(new, encode(tokenizer, new)["input_ids"]))
    return [memo[t] for t in texts]


def right_padded(ids: list[list[int]], pad_token_id: int):
    """{"input_ids", "attention_mask"}: (B, longest) right-padded tensors, what
    ``tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")`` returns."""
    from transformers import BatchEncoding

    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return BatchEncoding({"input_ids": input_ids, "attention_mask": mask})


def load_reward_model(name_or_path: str, tokenizer, seed: int = 0):
    """A one-output sequence classifier from ``name_or_path``.  From a base LM the ``score`` head is
    new, drawn under ``seed``; from a saved reward model (its ``save_pretrained``) the trained head is
    loaded and ``seed`` has no effect.  GPT-2's ``gelu_new`` modules are swapped for torch's fused
    tanh GELU (:func:`pluralign.lm.fused_gelu`: the same function up to float rounding; on the cpu
    profile's reward models it halves a RewardTrainer step and quarters a scoring pass)."""
    from transformers import AutoModelForSequenceClassification

    from .lm import check_source, fused_gelu

    check_source(name_or_path, "reward model base")
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return fused_gelu(model)


def length_sorted_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: int = CHUNK_ROWS,
                         **kwargs) -> torch.Tensor:
    """``model(input_ids, attention_mask).logits`` for a right-padded batch, computed in chunks of
    ``rows`` rows of similar length, each cut to its own longest row: (B, num_labels), rows in the
    batch's order, differentiable.  Equal to one padded forward up to float rounding: a causal
    model's outputs at real tokens do not depend on the right padding, and the classifier pools
    at the last non-pad token, which every chunk keeps.  A batch that is not right-padded (a 0
    before a 1 in a row's mask) goes through in one forward, as given.

    Why: TRL's preference collator pads a whole batch to its longest text; on the GPT-2 stage's
    pairs (mean 26 tokens, longest 74) a random batch of 64 pairs computed 2.5× the tokens it
    has, and the padding was most of a reward step's time on the cpu profile."""
    lengths = attention_mask.sum(1)
    right_padded = bool((attention_mask == (torch.arange(attention_mask.shape[1]) < lengths[:, None])).all())
    if not right_padded or len(input_ids) <= rows:
        return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    order = torch.argsort(lengths, stable=True)
    parts = []
    for idx in order.split(rows):
        width = int(lengths[idx].max())
        parts.append(model(input_ids=input_ids[idx, :width], attention_mask=attention_mask[idx, :width], **kwargs).logits)
    return torch.cat(parts)[torch.argsort(order)]


class _Logits:
    def __init__(self, logits):
        self.logits = logits


def _length_sorted_trainer(RewardTrainer):
    """TRL's RewardTrainer whose loss reads the logits of :func:`length_sorted_logits` (its
    loss, metrics and everything else unchanged: ``compute_loss`` is TRL's, handed a model whose
    call runs the batch in length-sorted chunks)."""

    class LengthSortedRewardTrainer(RewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            def chunked(input_ids, attention_mask, **kw):
                return _Logits(length_sorted_logits(model, input_ids, attention_mask, rows=CHUNK_ROWS, **kw))

            return super().compute_loss(chunked, inputs, return_outputs, num_items_in_batch)

    return LengthSortedRewardTrainer


def _processed(tokenizer, pairs: PreferencePairs):
    """Pre-tokenised dataset (``chosen_ids``/``rejected_ids``) so RewardTrainer skips its own pass."""
    from datasets import Dataset

    def ids(resps):
        return token_ids(tokenizer, [reward_text(tokenizer, p, r) for p, r in zip(pairs.prompt, resps)])

    return Dataset.from_dict({"chosen_ids": ids(pairs.chosen), "rejected_ids": ids(pairs.rejected)})


def train_reward_model(model, tokenizer, pairs: PreferencePairs, epochs: float = 1.0, lr: float = 5e-4,
                       batch_size: int = 32, seed: int = 0, max_length: int = 128, bf16: bool = False,
                       gradient_checkpointing: bool = False) -> dict:
    """Fit (or continue fitting: warm start) ``model`` on the pairs with TRL's RewardTrainer.
    Returns the trainer's final training metrics.

    TRL 1.16's RewardConfig defaults to bf16 autocast and gradient checkpointing; both are off
    here unless asked for (fp32 on CPU is faster for small models and keeps scores exact), and
    the autocast wrapper the Trainer leaves on ``model.forward`` is removed after training so that
    later scoring runs in the model's own dtype (and warm starts do not stack wrappers).

    Dropout: RewardConfig's ``disable_dropout=True`` (kept) sets every ``nn.Dropout`` to p=0, which
    would silence the LoRA dropout of a peft model too.  The LoRA dropouts get their configured p
    back right after the Trainer is built, so the adapter input is dropped out during training as
    the LoRA config (tulu_reward.lora_dropout) says, while the backbone's dropout stays off (TRL's
    convention for reward training; GPT-2's backbone has some, Llama's none).  Plain (non-LoRA)
    models, e.g. the GPT-2 stages' reward models, train exactly as before.

    Each batch's forward runs in length-sorted chunks of ``CHUNK_ROWS`` rows
    (:func:`length_sorted_logits`): TRL's loss on the same batches, equal to its one padded forward
    up to float rounding, and 2× fewer tokens computed on the GPT-2 stage's pairs.  A batch of at
    most ``CHUNK_ROWS`` rows (chosen + rejected; the Tulu2 stage's 16 pairs) is TRL's forward as it was."""
    from accelerate.utils import extract_model_from_parallel
    from transformers.utils import logging as hf_logging
    from trl import RewardConfig, RewardTrainer

    if pairs.n_pairs == 0:
        return {}
    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(output_dir=out, num_train_epochs=epochs, learning_rate=lr,
                            per_device_train_batch_size=batch_size, seed=seed, data_seed=seed,
                            max_length=max_length, report_to="none", save_strategy="no", logging_strategy="no",
                            use_cpu=not torch.cuda.is_available(), bf16=bf16, fp16=False,
                            gradient_checkpointing=gradient_checkpointing, disable_tqdm=True, lr_scheduler_type="constant",
                            dataloader_num_workers=0, remove_unused_columns=True)
        lora_p = {m: m.p for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Dropout) and ".lora_dropout." in f".{n}."}
        trainer = _length_sorted_trainer(RewardTrainer)(model=model, args=args, train_dataset=_processed(tokenizer, pairs),
                                                        processing_class=tokenizer)
        for m, p in lora_p.items():  # disable_dropout zeroed these too: the adapters keep theirs
            m.p = p
        result = trainer.train()
    extract_model_from_parallel(model, keep_fp32_wrapper=False)  # drop the Trainer's autocast wrapper, if any
    model.eval()
    return dict(result.metrics)


@torch.no_grad()
def score(model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 256) -> torch.Tensor:
    """Reward of each (prompt, response): (B,), tokenised as the model was trained (:func:`encode`)."""
    check_pad(tokenizer)
    texts = [reward_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    ids = token_ids(tokenizer, texts)
    # batches of similar length (pad less: a third of a scoring pass was padding on the GPT-2 pairs),
    # scores put back in the callers' order
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = []
    device = getattr(model, "device", None)  # transformers models have one; plain modules may not
    for i in range(0, len(texts), batch_size):
        enc = right_padded([ids[j] for j in order[i : i + batch_size]], tokenizer.pad_token_id)
        out.append(model(**(enc.to(device) if device is not None else enc)).logits[:, 0].float().cpu())
    if not out:
        return torch.zeros(0)
    sorted_scores = torch.cat(out)
    scores = torch.empty_like(sorted_scores)
    scores[torch.tensor(order)] = sorted_scores
    return scores


def pair_margins(model, tokenizer, pairs: PreferencePairs) -> torch.Tensor:
    """r(chosen) − r(rejected) for every pair: (N,)."""
    return score(model, tokenizer, pairs.prompt, pairs.chosen) - score(model, tokenizer, pairs.prompt, pairs.rejected)


def accuracy_by_group(model, tokenizer, pairs: PreferencePairs) -> list[float]:
    """Pairwise accuracy (r(chosen) > r(rejected)) per true group of the labelling user: [G]."""
    right = (pair_margins(model, tokenizer, pairs) > 0).float()
    g = pairs.group[pairs.user]
    return [float(right[g == k].mean()) for k in range(int(pairs.group.max()) + 1)]


class NeuralRewardMixture:
    """K neural reward models behind the EM interface (``K``, ``pair_log_likelihood``, ``fit``,
    ``state``/``load_state``).  The M-step is hard: cluster k continues training (warm start)
    on the pairs of the users assigned to it, with TRL's RewardTrainer — Algorithm 1 as written.
    Soft responsibilities would need per-example weights, which RewardTrainer does not take."""

    def __init__(self, base_path: str, tokenizer, K: int, epochs: float = 1.0, lr: float = 5e-4,
                 batch_size: int = 32, seed: int = 0):
        if K < 1:
            raise ValueError(f"K must be >= 1, got {K}")
        self.K, self.tokenizer = K, tokenizer
        self.models = [load_reward_model(base_path, tokenizer, seed=seed * 100 + k) for k in range(K)]
        self.train_kw = dict(epochs=epochs, lr=lr, batch_size=batch_size)
        self.seed, self.n_fits = seed, 0

    def pair_log_likelihood(self, data: PreferencePairs) -> torch.Tensor:
        return torch.stack([F.logsigmoid(pair_margins(m, self.tokenizer, data)) for m in self.models]).double()

    def fit(self, data: PreferencePairs, resp: torch.Tensor) -> None:
        if not bool(((resp == 0) | (resp == 1)).all()):
            raise ValueError("NeuralRewardMixture takes hard assignments only (run mixture_em with soft=False)")
        owner = resp.argmax(1)[data.user]
        for k, model in enumerate(self.models):
            rows = (owner == k).nonzero().flatten()
            if rows.numel() == 0:  # an empty cluster keeps its model (EM's split start fits cluster 0 alone)
                continue
            train_reward_model(model, self.tokenizer, data.subset(rows), seed=self.seed + self.n_fits, **self.train_kw)
        self.n_fits += 1

    def state(self):
        return [copy.deepcopy(m.state_dict()) for m in self.models]

    def load_state(self, state) -> None:
        for m, s in zip(self.models, state):
            m.load_state_dict(s)
