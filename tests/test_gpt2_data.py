"""The GPT-2 stage's data path on tiny local models: corpus, tokenizer, base policy, scorers,
labelled preferences, loading by path (the paper profile's code on local stand-ins)."""
import pytest
import torch

from pluralign import corpus, lm, preferences, scorers


@pytest.fixture(scope="module")
def tok():
    return lm.build_word_tokenizer(corpus.vocabulary())


@pytest.fixture(scope="module")
def policy(tok):
    torch.set_num_threads(1)
    return lm.tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, n_positions=64).eval()


def test_corpus_traits_vary_independently():
    reviews = corpus.generate_reviews(2000, seed=0)
    assert reviews == corpus.generate_reviews(2000, seed=0)  # seeded
    pos = scorers.VaderPositiveness()(reviews)
    words = torch.tensor([len(r.split()) for r in reviews], dtype=torch.float32)
    assert 0.3 < float(pos.mean()) < 0.7 and float(pos.std()) > 0.2
    assert abs(float(torch.corrcoef(torch.stack([pos, words]))[0, 1])) < 0.1
    assert set(" ".join(reviews).split()) <= set(corpus.vocabulary())


def test_prompts_are_review_heads():
    reviews = corpus.generate_reviews(300, seed=1)
    prompts = corpus.make_prompts(reviews, 50, seed=0)
    assert len(prompts) == 50 and all(2 <= len(p.split()) <= 8 for p in prompts)
    assert all(any(r.startswith(p) for r in reviews) for p in prompts)
    with pytest.raises(ValueError, match="only"):
        corpus.make_prompts(reviews[:3], 10, seed=0)


def test_tokenizer_round_trips_and_keeps_pad_distinct(tok):
    text = "the movie was not great !"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    assert tok.convert_ids_to_tokens(tok("great .<eos>")["input_ids"])[-1] == "<eos>"


def test_pretraining_lowers_loss_and_saved_policy_reloads(tmp_path, tok, policy):
    blocks = lm.pack_texts(tok, corpus.generate_reviews(400, 0), 32)
    val = lm.pack_texts(tok, corpus.generate_reviews(50, 1), 32)
    model = lm.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    curve = lm.pretrain(model, blocks, val, steps=40, batch_size=16, lr=3e-3, seed=0, eval_every=10, progress=False)
    assert curve[-1]["val_loss"] < curve[0]["val_loss"] - 0.5
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2 = lm.load_tokenizer(str(tmp_path))
    again = lm.load_causal_lm(str(tmp_path), tok2)
    ids, mask = lm.encode_prompts(tok2, ["the movie was", "i"])
    assert torch.allclose(again(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits, atol=1e-5)


def test_unknown_model_path_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path '/nonexistent/policy' does not exist"):
        lm.load_causal_lm("/nonexistent/policy")
    with pytest.raises(FileNotFoundError, match="neither a local path nor in the offline hub cache"):
        lm.load_tokenizer("no-such-org/no-such-model")
    with pytest.raises(FileNotFoundError, match="model path 'data/gpt2/no_such_policy' does not exist"):
        lm.load_causal_lm("data/gpt2/no_such_policy")  # a relative path, not a hub id


def test_sampling_is_seeded_and_stops_at_eos(tok, policy):
    prompts = ["the movie", "i watched it"] * 4
    a = lm.sample(policy, tok, prompts, 10, seed=3)
    assert a == lm.sample(policy, tok, prompts, 10, seed=3)
    assert all("<eos>" not in t and "<pad>" not in t for t in a)


def test_conciseness_counts_tokens(tok):
    c = scorers.Conciseness(tok, 10)(["the movie was great .", "", " ".join(["great"] * 30)])
    assert torch.allclose(c.double(), torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown scorer"):
        scorers.make_scorer("helpfulness")


def test_classifier_positiveness_loads_a_local_stand_in(tmp_path, tok):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    clf = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, num_labels=2,
                                                   pad_token_id=tok.pad_token_id, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                                   label2id={"NEGATIVE": 0, "POSITIVE": 1}))
    clf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    p = scorers.make_scorer("positiveness", classifier=str(tmp_path))(["the movie was great .", "awful"])
    assert p.shape == (2,) and bool(((p > 0) & (p < 1)).all())


def test_imdb_prompts_from_a_local_dataset_file(tmp_path, tok):
    import pandas as pd

    texts = [" ".join(corpus.generate_reviews(3, s)) for s in range(30)]
    pd.DataFrame({"text": texts, "label": 0}).to_csv(tmp_path / "imdb.csv", index=False)
    ds = corpus.load_text_dataset(str(tmp_path / "imdb.csv"))
    prompts = corpus.imdb_prompts(ds["text"], tok, 10, seed=0, min_chars=100)
    assert len(prompts) == 10 and all(any(t.startswith(p) for t in texts) for p in prompts)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus.load_text_dataset("./missing.csv")


def test_labels_follow_each_users_group_trait():
    n = 4000
    g = torch.Generator().manual_seed(0)
    s_a, s_b = torch.rand(2, n, generator=g), torch.rand(2, n, generator=g)
    a = [f"a{i}" for i in range(n)]
    b = [f"b{i}" for i in range(n)]
    pairs = preferences.label_pairs([f"p{i}" for i in range(n)], a, b, s_a, s_b, preferences.ratio_shares(3), 40, 0.05, 0)
    assert pairs.group.bincount().tolist() == [30, 10]
    ds = pairs.to_dataset()
    assert ds.column_names == ["prompt", "chosen", "rejected", "user_id", "group"]
    idx = {t: i for i, t in enumerate(a)}
    for grp in (0, 1):
        rows = [r for r in ds if r["group"] == grp]
        agree = sum((r["chosen"].strip() in idx) == bool(s_a[grp, int(r["prompt"][1:])] > s_b[grp, int(r["prompt"][1:])]) for r in rows)
        assert agree / len(rows) > 0.8  # mostly its own trait decides
    back = preferences.PreferencePairs.from_dataset(ds)
    assert back.n_users == 40 and torch.equal(back.group, pairs.group)


def test_bad_preference_inputs_are_named():
    with pytest.raises(ValueError, match="ratio must be > 0, got 0"):
        preferences.ratio_shares(0)
    from datasets import Dataset

    with pytest.raises(ValueError, match=r"missing column\(s\) \['user_id', 'group'\]"):
        preferences.PreferencePairs.from_dataset(Dataset.from_dict({"prompt": ["x"], "chosen": ["a"], "rejected": ["b"]}))
