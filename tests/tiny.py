"""Micro-scale parameters for every stage: the notebooks and the pipeline in seconds."""
TINY = {
    "impossibility": {
        "seed": 0, "n_items": 5, "beta": 0.5, "reward_scale": 2.0, "minority_shares": [0.5, 0.1],
        "angles_deg": [0, 90, 180], "headline_share": 0.1, "headline_angle_deg": 90,
        "three_group_shares": [0.6, 0.3, 0.1], "maxmin_steps": 50,
    },
    "em_clusters": {
        "seed": 0, "n_items": 10, "d": 3, "K": 2, "shares": [0.75, 0.25], "n_users": 8, "per_user": 10,
        "separation": 1.0, "reward_scale": 3.0, "l2": 0.01, "n_init": 1, "init": "mixed", "max_iter": 5,
        "soft": False, "sweep_per_user": [1, 10], "sweep_separation": [0.0, 1.0], "sweep_K": [2, 3], "n_reps": 1,
    },
    "nash_md": {
        "seed": 0, "n_actions": 5, "tau": 0.2, "T": 30, "constant_eta": 0.5, "n_random": 1, "eps_grid": [-0.1, 0.1],
    },
}
TINY.update({
    "gpt2": {"profile": "cpu", "base_model": "lvwerra/gpt2-imdb", "imdb": "stanfordnlp/imdb",
             "sentiment_model": "lvwerra/distilbert-imdb", "raw_dir": "data/raw", "max_new_tokens": 12, "temperature": 1.0},
    "corpus": {"seed": 0, "n_reviews": 300, "n_val_reviews": 40, "n_prompts_train": 60, "n_prompts_test": 16,
               "classifier_reviews": 400, "n_test_reviews": 100},
    "pretrain": {"seed": 0, "vocab_size": 400, "passage_sentences": 3, "n_layer": 1, "n_embd": 16, "n_head": 2,
                 "block_size": 40, "batch_size": 8, "steps": 4, "lr": 0.003, "dropout": 0.0, "bf16": False,
                 "n_samples": 16},
    "label": {"seed": 0, "ratios": [1, 3], "n_train_users": 4, "n_test_users": 4, "test_fraction": 0.5,
              "bt_temperature": 0.1},
    "reward": {"seed": 0, "ratios": [1, 3], "K": 2, "epochs": 1.0, "lr": 0.001, "batch_size": 8, "em_iterations": 2,
               "em_init": "split+round_robin", "em_restarts": 1, "oracle_ratios": [3], "workers": 2, "threads": 1},
    "align": {"ratios": [1, 3], "seeds": [0, 1], "methods": ["single", "maxmin"], "headline_ratio": 3,
              "headline_methods": ["sample_min", "maxmin_oracle"], "variant_seeds": [0, 1], "sweep_seeds": [0, 1],
              "steps": 2, "batch_size": 8, "mini_batch_size": 4, "ppo_epochs": 1, "lr_grid": [0.001, 0.002],
              "tune_seed": 100, "n_val_prompts": 8, "kl_coef": 0.05, "kl_target": None, "kl_horizon": 10000,
              "top_p": 1.0, "lr_schedule": "constant", "whiten_rewards": False, "vf_coef": 0.1, "cliprange": 0.2,
              "gamma": 1.0, "lam": 0.95, "n_standardise": 8, "eval_steps": [1, 2], "n_eval_prompts": 8, "eval_seed": 0,
              "workers": 2, "optim": "adamw_torch_fused"},  # the paper profiles' kernel, run through the stages
    "evaluate": {"n_boot": 200, "seed": 0},
    "preference": {"seed": 0, "ratio": 3, "epochs": 1.0, "lr": 0.001, "batch_size": 8},
    "compare": {"betas": [0.0, 0.5], "bt_betas": [0.5], "tau": 0.05, "tune_beta": 0.5, "nash_seeds": [0, 1],
                "n_boot": 200, "seed": 0},
})
TINY["condorcet"] = {"seed": 0, "scale": 4.0, "beta": 0.5, "first_shares": [0.3333333, 0.6], "T": 20,
                     "dynamics_tau": 0.02, "dynamics_eta": 2.0}
NOTEBOOKS = {"impossibility": "01_impossibility.ipynb", "em_clusters": "02_em_clusters.ipynb", "nash_md": "03_nash_md.ipynb",
             "condorcet": "10_condorcet.ipynb"}
# the GPT-2 stages in pipeline order; each also takes the shared `gpt2` section
GPT2_CHAIN = [("corpus", "04_corpus.ipynb"), ("pretrain", "05_pretrain.ipynb"), ("label", "06_label.ipynb"),
              ("reward", "07_reward.ipynb"), ("align", "08_align.ipynb"), ("evaluate", "09_evaluate.ipynb"),
              ("preference", "11_preference.ipynb"), ("compare", "12_compare.ipynb")]
ALSO = {"compare": ["align"]}  # sections a stage takes besides its own and `gpt2` (dvc.yaml's --also)
TINY.update({
    "tulu2": {"profile": "cpu", "base_model": "allenai/tulu-2-7b", "raw_data": "data/raw", "pairs": "alpaca_eval",
              "soups_path": "", "soups_pattern": "{dim}.json",
              "ppo_prompts": "", "eval_prompts": "", "majority": "P1A", "minority": "P1B", "max_new_tokens": 6,
              "temperature": 1.0, "dtype": "float32", "load_in_bits": None,
              "accelerate_config": "configs/accelerate/single_gpu.yaml", "judge": "rule", "judge_model": ""},
    "tulu_reward": {"seed": 0, "ratio": 3, "n_users": 8, "test_fraction": 0.25, "n_pairs": 64, "bt_temperature": 0.05,
                    "n_ppo_prompts": 16, "ppo_prompt_max_chars": 0, "K": 2, "reward_training": "lora", "head_l2": 1.0, "lora_r": 4,
                    "lora_alpha": 8, "lora_dropout": 0.1, "epochs": 1.0, "lr": 0.001, "batch_size": 8,
                    "max_length": 128, "em_iterations": 2, "vocab_size": 600, "base_hidden": 16, "base_layers": 1,
                    "pretrain_steps": 4, "min_steps": 2},
    "tulu_align": {"seeds": [0, 1], "methods": ["single", "maxmin"], "steps": 1, "batch_size": 4, "mini_batch_size": 2,
                   "ppo_epochs": 1, "lr": 0.001, "kl_coef": 0.05, "kl_target": None, "kl_horizon": 10000,
                   "lr_schedule": "constant", "top_p": 1.0, "n_standardise": 4, "n_prompts": 0, "lora_r": 4,
                   "lora_alpha": 8, "gradient_checkpointing": False, "n_boot": 100, "optim": "adamw_torch_fused"},
})
# the Tulu2 stages in order; each also takes the shared `tulu2` section
TULU_CHAIN = [("tulu_reward", "13_tulu2_reward.ipynb"), ("tulu_align", "14_tulu2_align.ipynb")]


# ---- tiny tokenizers with the special-token behaviour of the real ones (no hub)
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,?!:;'-\n<|>")


def tiny_llama_tokenizer():
    """A character-level ``LlamaTokenizer`` that, like Llama 2 / Tulu2's, puts <s> (BOS) first and
    adds no EOS (``add_special_tokens=True``); </s> in a text is the EOS token; pad <pad> ≠ EOS."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{c: i + 4 for i, c in enumerate(["▁"] + _CHARS)}}
    return LlamaTokenizer(vocab=vocab, merges=[], pad_token="<pad>", add_bos_token=True, add_eos_token=False)


def tiny_gpt2_tokenizer():
    """A byte-level ``GPT2Tokenizer`` (GPT-2's special-token behaviour: nothing added, no BOS) with a
    pad token <pad> ≠ EOS <|endoftext|>, as :func:`pluralign.lm.load_tokenizer` gives it."""
    from transformers import GPT2Tokenizer

    vocab = {"<|endoftext|>": 0, "<pad>": 1, **{c: i + 2 for i, c in enumerate(["Ġ", "Ċ"] + _CHARS)}}
    return GPT2Tokenizer(vocab=vocab, merges=[], pad_token="<pad>")
