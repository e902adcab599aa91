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
NOTEBOOKS = {"impossibility": "01_impossibility.ipynb", "em_clusters": "02_em_clusters.ipynb", "nash_md": "03_nash_md.ipynb"}
