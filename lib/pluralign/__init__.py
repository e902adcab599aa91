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
  maxmin_ppo     MaxMin-PPO: K group rewards standardised, the worst-off group drives each update
  trl_rewards    the MaxMin reward as a reward function for TRL's GRPOTrainer / RLOOTrainer
  pairwise       pairwise preference model P(y ≻ y'|x) (antisymmetric) and the BT-derived one
  nash_md_lm     Nash-MD-PG for causal LMs: geometric-mixture opponent with a KV cache, loss, trainer (LoRA/EMA)
  compare        win-rate matrices between policies, per group and pooled; which policy a group picks
  soups          RLPHF "personalized soups" data, alpaca/Koala prompts, and their generated stand-in
  lora           LoRA reward models (K adapters on one base, EM-ready) and LoRA policies; tiny Llama
  judge          pairwise judges (local model, OpenAI-compatible endpoint, stand-in rules), position-swapped
  report         metrics JSON, figures and wall-time helpers for the notebooks
"""
__version__ = "0.1.0"
