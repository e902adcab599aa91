"""The paper profiles are params only: every value names a real parameter and passes validation."""
import subprocess
import sys

import pytest
import yaml

PROFILES = ["configs/gpt2_paper.yaml", "configs/tulu2_paper.yaml"]


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_flags_name_real_params_and_round_trip(root, profile):
    sys.path.insert(0, str(root / "scripts"))
    import profile_flags

    values = yaml.safe_load((root / profile).read_text())
    flags = profile_flags.flags(values)
    back = {}
    for f in flags:
        key, value = f.removeprefix("-S ").split("=", 1)
        section, name = key.split(".")
        back.setdefault(section, {})[name] = yaml.safe_load(value)
    assert back == values
    out = subprocess.run([sys.executable, str(root / "scripts" / "profile_flags.py"), str(root / profile)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == " ".join(flags).split()


def test_the_papers_settings_are_the_ones_in_the_profiles(root):
    gpt2 = yaml.safe_load((root / "configs/gpt2_paper.yaml").read_text())
    for k, v in {"lr_grid": [3e-6], "lr_schedule": "cosine", "ppo_epochs": 3, "whiten_rewards": True, "top_p": 0.95,
                 "kl_coef": 0.05, "vf_coef": 0.1, "cliprange": 0.2, "gamma": 1.0, "lam": 0.95}.items():
        assert gpt2["align"][k] == v, k
    assert gpt2["gpt2"] == {"profile": "paper", "max_new_tokens": 53, "temperature": 0.7}
    tulu = yaml.safe_load((root / "configs/tulu2_paper.yaml").read_text())["tulu_align"]
    assert (tulu["kl_target"], tulu["ppo_epochs"], tulu["lr"]) == (0.1, 8, 1.4e-5)


def test_a_typo_in_a_profile_is_an_error(root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("align:\n  top_pp: 0.9\n")
    out = subprocess.run([sys.executable, str(root / "scripts" / "profile_flags.py"), str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "align.top_pp is not a parameter" in out.stderr
    bad.write_text("align:\n  kl_target: 0\n")
    out = subprocess.run([sys.executable, str(root / "scripts" / "profile_flags.py"), str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "align.kl_target = 0" in out.stderr
