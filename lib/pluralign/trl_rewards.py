"""MaxMin-RLHF's reward for TRL's maintained online trainers (``GRPOTrainer``, ``RLOOTrainer``).

TRL 1.16 calls every custom reward function once per generation batch as
``f(prompts=..., completions=..., completion_ids=..., **dataset_columns, trainer_state=...,
log_extra=..., log_metric=...)`` and expects one float per completion.  :class:`MaxMinReward`
scores the batch with K group reward models (:class:`pluralign.maxmin_ppo.GroupRewards`) and
turns the (K, B) scores into one reward per completion with :func:`pluralign.maxmin_ppo.combine`:
``argmin`` (the paper's Algorithm 2: the group with the lowest batch-mean reward drives the whole
batch) or ``sample_min`` (the authors' released code: min over groups, per completion).

"Batch" is TRL's whole generation batch: TRL calls the reward function on each process with that
process's share (per_device_train_batch_size × steps_per_generation completions), so under
``accelerate launch`` with several processes the per-group sums and counts are all-reduced
(:func:`batch_group_means`) and every process picks the same group — the argmin over the global
batch, as on one process.

The group picked is logged to TRL's logs through the reward-function API's ``log_metric``
(``maxmin_<rule>/picked_group`` and each ``maxmin_<rule>/group_<k>_mean``, averaged by TRL over
processes and logging steps: every process picks the same group, so a step's value is that group)
and kept in :attr:`MaxMinReward.picked`.

Standardisation: the K models are put on one scale by base-policy means and standard deviations —
given, fitted on samples (:meth:`MaxMinReward.fit_standardisation`), or ``standardise="first_batch"``:
from the first generation batch TRL scores, which the initial policy drew (a LoRA policy starts
as its base: B = 0), over every process's completions — no separate sampling pass, which under
DeepSpeed ZeRO-3 or FSDP would need the sharded policy outside the trainer.

Passing the K reward models to TRL as K separate ``reward_funcs`` would not do this: TRL sums
weighted rewards, the utilitarian objective, not the egalitarian min.
"""
from __future__ import annotations

import torch

from .maxmin_ppo import RULES, GroupRewards, combine

__all__ = ["MaxMinReward", "batch_group_means", "batch_group_moments"]


def _all_sum(buf: torch.Tensor) -> torch.Tensor:
    """buf (float64) summed over the processes when ``torch.distributed`` is initialised with more
    than one (one all-reduce; on the GPU for NCCL), else itself."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        buf = buf.to(device)
        dist.all_reduce(buf)  # SUM
        buf = buf.cpu()
    return buf


def batch_group_means(scores: torch.Tensor) -> torch.Tensor:
    """(K,) mean score of each group over the whole generation batch: this process's (K, B)
    scores and, when ``torch.distributed`` is initialised with more than one process, every other
    process's (one all-reduce of the K sums and the count, float64).  Processes may hold different
    numbers of completions."""
    buf = _all_sum(torch.cat([scores.double().sum(1), torch.tensor([float(scores.shape[1])], dtype=torch.float64)]))
    return buf[:-1] / buf[-1]


def batch_group_moments(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (K,), unbiased std (K,)) of each group's scores over every process's (K, B) scores,
    from one all-reduce of the sums, the sums of squares and the count (float64)."""
    x = scores.double()
    buf = _all_sum(torch.cat([x.sum(1), (x * x).sum(1), torch.tensor([float(x.shape[1])], dtype=torch.float64)]))
    K = x.shape[0]
    n, s, ss = buf[-1], buf[:K], buf[K:2 * K]
    mean = s / n
    var = (ss - n * mean * mean) / (n - 1).clamp_min(1)
    return mean, var.clamp_min(0).sqrt()


class MaxMinReward:
    """Worst-off-group reward for ``GRPOTrainer(reward_funcs=[MaxMinReward(...)])``.

    models: K one-output sequence classifiers (one per group) reading prompt + completion + eos;
    tokenizer: theirs (the policy's, in this compendium); rule: one of ``maxmin_ppo.RULES``;
    standardise: optional (mean, std), each (K,), from base-policy samples, or ``"first_batch"``
    (fitted on the first call's completions, all processes' together, module docstring) — without
    it the raw scores are compared, which is only meaningful when the models share a scale.

    ``picked`` holds, per call, the group the rule singled out (−1 for ``sample_min``/``mean``);
    ``group_means`` the (K,) mean standardised score of every group over the global batch, per call."""

    def __init__(self, models: list, tokenizer, rule: str = "argmin", standardise=None):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if isinstance(standardise, str) and standardise != "first_batch":
            raise ValueError(f"standardise must be None, (mean, std) or 'first_batch', got {standardise!r}")
        self.fit_first_batch = standardise == "first_batch"
        mean, std = ((None, None) if standardise is None or self.fit_first_batch
                     else (torch.as_tensor(s).float() for s in standardise))
        if mean is not None and not (mean.shape == std.shape == (len(models),)):
            raise ValueError(f"standardise needs (mean, std) of shape ({len(models)},) each, got "
                             f"{tuple(mean.shape)} and {tuple(std.shape)}")
        self.rewards = GroupRewards(list(models), tokenizer, mean, std)
        self.rule = rule
        self.__name__ = f"maxmin_{rule}"  # TRL logs each reward function under its __name__
        self.picked: list[int] = []
        self.group_means: list[list[float]] = []

    def fit_standardisation(self, prompts: list[str], responses: list[str]) -> "MaxMinReward":
        """Per-model mean/std on base-policy responses (responses start with a space)."""
        self.rewards.fit_standardisation(prompts, responses)
        return self

    def __call__(self, prompts, completions, completion_ids=None, log_metric=None, **kwargs) -> list[float]:
        if prompts and not isinstance(prompts[0], str):
            raise ValueError("MaxMinReward takes standard-format (text) prompts; conversational prompts (lists of "
                             "messages) would need the reward models' chat template, which it does not apply")
        # the decoded completion may or may not begin with a space (word-level vs BPE tokenizers);
        # the reward models were trained on prompt + " " + response, as maxmin_ppo.train_policy scores it
        responses = [" " + c.strip() for c in completions]
        g = self.rewards
        raw = g.raw(prompts, responses)  # (K, B)
        if self.fit_first_batch and g.mean is None:  # the initial policy's completions: base samples
            mean, std = batch_group_moments(raw)
            g.mean, g.std = mean.float(), std.float().clamp_min(1e-6)
        scores = (raw - g.mean[:, None]) / g.std[:, None] if g.mean is not None else raw  # GroupRewards' z-scores
        means = batch_group_means(scores)  # over every process's completions
        if self.rule == "argmin":
            group = int(means.argmin())  # maxmin_group on the global batch: the same on every process
            reward = scores[group]
        else:
            reward, group = combine(scores, self.rule)
        self.picked.append(group)
        self.group_means.append(means.tolist())
        if log_metric is not None:  # shows up in the trainer's logs next to its own metrics
            if group >= 0:
                log_metric(f"{self.__name__}/picked_group", float(group))
            for k, m in enumerate(self.group_means[-1]):
                log_metric(f"{self.__name__}/group_{k}_mean", m)
        return reward.tolist()
