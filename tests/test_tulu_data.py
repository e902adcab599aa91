"""Real text for the Tulu2 stages: AlpacaEval style pairs, users who label them, Alpaca / Koala
prompts, deliberate truncation of long reward texts (nothing dropped silently), prompt formats."""
import json

import pytest
import torch

from pluralign import rawdata, soups, tulu_data
from pluralign.preferences import PreferencePairs, ratio_shares

SIMPLE = "The sun is hot. Dogs like to run. We can play in the park."
EXPERT = ("Photosynthetic carbon fixation proceeds predominantly through ribulose-1,5-bisphosphate "
          "carboxylase/oxygenase, whose catalytic inefficiency necessitates considerable enzymatic abundance.")


@pytest.fixture(scope="module")
def pool():
    return tulu_data.style_pairs(rawdata.alpaca_eval())


@pytest.fixture(scope="module")
def bpe(pool):
    pairs, _ = pool
    return tulu_data.bpe_tokenizer(tulu_data.pool_texts(pairs[:200]), 600)


def test_style_pairs_count_every_pair_left_out(pool):
    pairs, counts = pool
    assert counts == {"candidates": 805 * 6, "missing_variant": 3, "identical": 28, "pairs": 4799}
    assert len(pairs) == 4799 and {p["generator"] for p in pairs} == set(tulu_data.STYLE_GENERATORS)
    assert all(p["concise"] != p["verbose"] and p["concise"] and p["verbose"] for p in pairs)
    longer = sum(len(p["verbose"].split()) > len(p["concise"].split()) for p in pairs) / len(pairs)
    assert longer > 0.9  # the verbose variant really is the longer one


def test_traits_point_the_right_way():
    assert tulu_data.fk_grade(EXPERT) > tulu_data.fk_grade(SIMPLE) + 10
    assert tulu_data.trait("P1B", EXPERT) > tulu_data.trait("P1B", SIMPLE)
    assert tulu_data.trait("P1A", EXPERT) < tulu_data.trait("P1A", SIMPLE)
    long = " ".join([SIMPLE] * 5)
    assert tulu_data.trait("P2B", long) > tulu_data.trait("P2B", SIMPLE)
    assert tulu_data.trait("P2A", long) < tulu_data.trait("P2A", SIMPLE)
    for d in tulu_data.TEXT_DIMENSIONS:
        assert 0.0 <= tulu_data.trait(d, EXPERT) <= 1.0
    with pytest.raises(ValueError, match="has no text rule"):
        tulu_data.trait("P3A", SIMPLE)
    t = tulu_data.traits(["P1A", "P2B"], [SIMPLE, EXPERT, long])
    assert t.shape == (2, 3) and t.dtype == torch.float64


def test_users_at_10_to_1_label_every_pair_and_disagree(pool):
    pairs, _ = pool
    some = pairs[:440]
    data = tulu_data.label(some, ("P1A", "P1B"), ratio_shares(10), 44, 0.02, seed=0)
    assert data.n_pairs == 440 and data.n_users == 44 and int(data.group.sum()) == 4
    assert torch.bincount(data.user, minlength=44).min() == 10  # round-robin: every user labels the same number
    by_text = {(p["concise"], p["verbose"]) for p in some}
    assert all((c, r) in by_text or (r, c) in by_text for c, r in zip(data.chosen, data.rejected))
    g = data.group[data.user]
    chose_easier = torch.tensor([tulu_data.fk_grade(c) < tulu_data.fk_grade(r) for c, r in zip(data.chosen, data.rejected)])
    assert chose_easier[g == 0].float().mean() > 0.8   # P1A users prefer the lower grade
    assert chose_easier[g == 1].float().mean() < 0.2   # P1B users the higher one
    assert not data.chosen[0].startswith(" ") and data.prompt[0].startswith("<|user|>\n")
    again = tulu_data.label(some, ("P1A", "P1B"), ratio_shares(10), 44, 0.02, seed=0)
    assert again.chosen == data.chosen and torch.equal(again.user, data.user)


def test_split_by_instruction_keeps_instructions_apart(pool):
    pairs, _ = pool
    train, test = tulu_data.split_by_instruction(pairs, 0.2, seed=0)
    assert len(train) + len(test) == len(pairs)
    assert not {p["idx"] for p in train} & {p["idx"] for p in test}
    assert abs(len({p["idx"] for p in test}) - 161) <= 1


def test_prompt_files_are_the_real_alpaca_sample_and_koala(tmp_path):
    made = tulu_data.write_prompt_files(tmp_path, n_ppo_prompts=100, seed=3)
    ppo = soups.load_questions(made["ppo_prompts"])
    koala = soups.load_questions(made["eval_prompts"])
    assert len(ppo) == 100 and len(set(ppo)) > 95 and len(koala) == 50
    assert koala == [r["prompt"].strip() for r in rawdata.koala()]
    instructions = {r["instruction"] for r in rawdata.alpaca()}
    assert all(r["instruction"] in instructions for r in json.loads(made["ppo_prompts"].read_text()))
    assert tulu_data.write_prompt_files(tmp_path / "b", n_ppo_prompts=100, seed=3)["ppo_prompts"].read_text() == \
        made["ppo_prompts"].read_text()
    short = tulu_data.sample_instructions(rawdata.alpaca(), 50, seed=0, max_chars=80)
    assert len(short) == 50 and all(len(r["instruction"]) + len(r["input"]) <= 80 for r in short)
    koala_p1b = tulu_data.format_prompts(koala, "tulu", preference=soups.PREFERENCES["P1B"])
    assert koala_p1b[0].endswith(f"{soups.PREFERENCES['P1B']} \n<|assistant|>\n")


def test_bpe_tokenizer_puts_bos_first_once(bpe, tmp_path):
    from pluralign import lm

    ids = bpe("hello there")["input_ids"]
    assert ids[0] == bpe.bos_token_id and ids.count(bpe.bos_token_id) == 1
    bpe.save_pretrained(tmp_path)
    again = lm.load_tokenizer(str(tmp_path))
    assert again("hello there")["input_ids"] == ids and again.pad_token_id != again.eos_token_id


def _pairs(prompts, chosen, rejected):
    n = len(prompts)
    return PreferencePairs(prompts, chosen, rejected, torch.arange(n) % 2, 2, torch.tensor([0, 1]))


def test_truncation_is_deliberate_and_counted(pool, bpe):
    pairs, _ = pool
    long = [p for p in pairs if len(p["verbose"]) > 2000][:6]
    data = _pairs([soups.tulu_prompt(p["instruction"]) for p in long], [p["concise"] for p in long],
                  [p["verbose"] for p in long])
    assert tulu_data.too_long(bpe, data, 128) == 6  # RewardTrainer would have dropped all six
    cut, counts = tulu_data.truncate_pairs(bpe, data, 128)
    assert tulu_data.too_long(bpe, cut, 128) == 0
    assert counts["pairs"] == 6 and counts["pairs_cut"] == 6 and counts["rejected_cut"] == 6
    assert all(v.startswith(r[:50]) and len(r) < len(v) for r, v in zip(cut.rejected, data.rejected))  # the end goes
    assert cut.user.tolist() == data.user.tolist()
    fine, none = tulu_data.truncate_pairs(bpe, _pairs(["<|user|>\nhi \n<|assistant|>\n"], ["ok"], ["yes"]), 128)
    assert none["pairs_cut"] == 0 and fine.chosen == ["ok"]
    with pytest.raises(ValueError, match="the prompt alone needs more than max_length=16"):
        tulu_data.truncate_pairs(bpe, _pairs([soups.tulu_prompt(EXPERT)], ["a"], ["b"]), 16)
    kept, prompts, left = tulu_data.fitting_prompts(long[:2] + [{"instruction": EXPERT}],
                                                   ["<|user|>\nhi \n<|assistant|>\n"] * 2 + [soups.tulu_prompt(EXPERT * 3)],
                                                   bpe, 128)
    assert left == 1 and len(kept) == len(prompts) == 2


class _ChatTok:
    bos_token = "<|im_start|>"
    chat_template = "yes"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def test_chat_prompts_leave_bos_to_the_tokenizer():
    p = tulu_data.format_prompt("Hi?", "chat", _ChatTok(), "Be brief.")
    assert p == "user\nHi? Be brief.<|im_end|>\n<|im_start|>assistant\n"
    assert tulu_data.prompt_style("small") == "chat" and tulu_data.prompt_style("cpu") == "tulu"
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        tulu_data.format_prompt("Hi?", "chat")
    with pytest.raises(ValueError, match="prompt style must be one of"):
        tulu_data.format_prompt("Hi?", "markdown")
