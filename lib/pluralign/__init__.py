"""pluralign: kernels for aligning language models with diverse human preferences.

Modules (each a paper's box written as functions):
  bradley_terry  BT likelihood, linear/tabular reward fitting, the reward-mixture interface
  em             EM over users for a mixture of reward models (MaxMin-RLHF Algorithm 1)
  simulate       synthetic users drawn from K BT groups
  tabular        KL-regularised RLHF, alignment gaps, diversity, MaxMin (Algorithm 2, exact)
  nash           tabular Nash-MD, OMD, self-play, best response, exploitability, equilibria
  games          the NLHF paper's worked examples as preference matrices
  checks         validation of params.yaml sections (one-line errors)
  corpus         generated review-like corpus and prompts (cpu profile), IMDb prompt cutting (paper)
  lm             tokenizer, tiny GPT-2, pretraining, loading by path or hub id, sampling
  scorers        positiveness (VADER or a classifier) and conciseness, one interface
  preferences    simulated users labelling pairs; TRL-format preference data
  reward_models  neural BT reward models (TRL RewardTrainer) and their EM mixture
  ppo            compact PPO for causal LMs (value head, GAE, clipped loss, KL to reference, LoRA-aware)
  report         metrics JSON, figures and wall-time helpers for the notebooks
"""
__version__ = "0.1.0"
