import pytest
import torch

from pluralign import corpus, lm
from pluralign.maxmin_ppo import GroupRewards, combine, train_policy
from pluralign.ppo import PPOConfig


def test_argmin_rule_picks_the_worst_off_group():
    scores = torch.tensor([[0.5, 1.0, 0.9], [-0.2, 0.1, 0.0], [2.0, -3.0, 1.5]])
    reward, group = combine(scores, "argmin")
    assert group == 1 and torch.equal(reward, scores[1])  # mean −0.03 is the lowest (row 2 averages 0.17)
    reward, group = combine(scores, "sample_min")
    assert group == -1 and torch.equal(reward, torch.tensor([-0.2, -3.0, 0.0]))
    assert torch.allclose(combine(scores, "mean")[0], scores.mean(0))
    assert combine(scores[:1], "single")[1] == 0


def test_bad_rules_are_named():
    with pytest.raises(ValueError, match="rule must be one of"):
        combine(torch.zeros(2, 3), "maximin")
    with pytest.raises(ValueError, match="'single' takes one reward model, got 2"):
        combine(torch.zeros(2, 3), "single")


class LengthReward(torch.nn.Module):
    """A stand-in 'reward model' scoring by the number of tokens (sign chooses long or short)."""

    def __init__(self, sign):
        super().__init__()
        self.sign = sign

    def forward(self, input_ids, attention_mask=None, **_):
        return type("Out", (), {"logits": (self.sign * attention_mask.sum(1, keepdim=True)).float()})()


def test_group_rewards_standardise_on_base_samples_and_maxmin_trains(tmp_path):
    torch.set_num_threads(1)
    tok = lm.build_word_tokenizer(corpus.vocabulary())
    model = lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, n_positions=64)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rewards = GroupRewards([LengthReward(1.0), LengthReward(-1.0)], tok)
    prompts = ["the movie", "i watched it", "the acting was", "what a"] * 4
    base = [" the movie was great .", " i liked it .", " the plot was dull and the acting was bad .", " ok ."] * 4
    rewards.fit_standardisation(prompts, base)
    z = rewards(prompts, base)
    assert z.shape == (2, 16) and float(z.mean(1).abs().max()) < 1e-5
    cfg = PPOConfig(batch_size=8, mini_batch_size=4, ppo_epochs=1, max_new_tokens=6, seed=0)
    seen = []
    ppo, history = train_policy(str(tmp_path), tok, rewards, prompts, "argmin", 3, cfg, progress=False,
                                monitor=lambda texts: seen.append(len(texts)) or {"n": len(texts)})
    assert len(history) == 3 and seen == [8, 8, 8]
    for row in history:  # the rule trained on the group whose mean standardised reward was lower
        assert row["group"] == int(row["reward_1"] < row["reward_0"])
    with pytest.raises(RuntimeError, match="fit_standardisation"):
        GroupRewards([LengthReward(1.0)], tok)(prompts, base)
