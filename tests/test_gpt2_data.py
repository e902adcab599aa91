"""The GPT-2 stage's data path on tiny local models: review passages and splits, tokenizer, base
policy, scorers, labelled preferences, loading by path (the paper profile's code on local
stand-ins).  The grammar of pluralign.corpus is the fixture: a small vocabulary, no data files."""
import warnings

import numpy as np
import pytest
import torch

from pluralign import corpus, imdb, lm, preferences, scorers


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
    fast = lm.tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64, dropout=0.0)
    assert fast.config.resid_pdrop == fast.config.attn_pdrop == 0.0 and fast.config.eos_token_id == tok.eos_token_id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16 = lm.pretrain(fast, blocks, val, steps=20, batch_size=16, lr=3e-3, seed=0, eval_every=10, progress=False,
                           bf16=True)
    assert bf16[-1]["val_loss"] < bf16[0]["val_loss"] and next(fast.parameters()).dtype == torch.float32
    # bf16 autocast on a CPU that emulates it (17x slower on AVX2) is said, once, where it is asked for
    slow = [w for w in caught if "without native bfloat16" in str(w.message)]
    assert len(slow) == (0 if lm.native_bf16() else 1)
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
    # the CPU path (pluralign.sampling) and generate's (top-p, or a GPU) sample one distribution: at a
    # sharp temperature both give the greedy answer to every prompt
    ids, mask = lm.encode_prompts(tok, prompts[:2])
    greedy = policy.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, ids.shape[1]:]
    expect = [t.strip() for t in tok.batch_decode(greedy, skip_special_tokens=True)]
    assert lm.sample(policy, tok, prompts[:2], 10, temperature=1e-4, seed=0) == expect
    assert lm.sample(policy, tok, prompts[:2], 10, temperature=1e-4, top_p=0.999, seed=1) == expect


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


def test_reviews_and_prompts_from_a_local_dataset_file(tmp_path, tok):
    import pandas as pd

    # the paper profile's path: a hub id or local file with text and label columns, <br /> stripped
    texts = [" ".join(corpus.generate_reviews(3, s)) + " <br /><br />the end\x85 ." for s in range(30)]
    pd.DataFrame({"text": texts, "label": [s % 2 for s in range(30)]}).to_csv(tmp_path / "imdb.csv", index=False)
    reviews = imdb.load_reviews("train", dataset=str(tmp_path / "imdb.csv"))
    assert [r["label"] for r in reviews] == [s % 2 for s in range(30)]
    assert all("<br" not in r["text"] and len(r["text"].splitlines()) == 1 for r in reviews)
    assert reviews[0]["text"].endswith(" the end  .")  # U+0085 became a space
    cleaned = [r["text"] for r in reviews]
    prompts = imdb.make_prompts(cleaned, 10, seed=0, min_chars=100, tokenizer=tok)  # in the policy's tokens
    assert len(prompts) == 10 and all(any(t.startswith(p) for t in cleaned) for p in prompts)
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(ValueError, match="no 'label' column"):
        imdb.load_reviews("train", dataset=str(tmp_path / "nolabel.csv"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        imdb.load_text_dataset("./missing.csv")


def test_sentences_and_passages():
    text = 'It was "great!" Then it ended... Why? (I loved it.) Mr. Smith, no. Last words'
    assert imdb.sentences(text) == ['It was "great!"', "Then it ended...", "Why?", "(I loved it.)", "Mr.",
                                    "Smith, no.", "Last words"]
    assert imdb.sentences("") == [] and imdb.sentences("no end") == ["no end"]
    texts = corpus.generate_reviews(50, seed=0)
    parts = imdb.passages(texts, 2, seed=0)
    assert parts == imdb.passages(texts, 2, seed=0) and parts != imdb.passages(texts, 2, seed=1)
    assert " ".join(parts) == " ".join(" ".join(imdb.sentences(t)) for t in texts)  # every sentence, in order, once
    counts = [len(imdb.sentences(p)) for p in parts]
    assert set(counts) == {1, 2}
    assert imdb.passages(texts, 0, seed=0) == texts
    with pytest.raises(ValueError, match="max_sentences must be >= 0"):
        imdb.passages(texts, -1, seed=0)
    assert imdb.first_words(["a b  c d", "x"], 2) == ["a b", "x"]
    assert imdb.one_line("a\x85b\u2028c\nd") == "a b c d"


def test_split_reviews_is_seeded_disjoint_and_stable():
    records = [{"text": f"r{i}", "label": i % 2} for i in range(100)]
    pool, held = imdb.split_reviews(records, 60, 10, seed=0)
    assert len(pool) == 60 and len(held) == 10
    assert not {r["text"] for r in pool} & {r["text"] for r in held}
    assert imdb.split_reviews(records, 30, 10, seed=0)[1] == held  # the held-out slice does not move with the pool
    assert imdb.split_reviews(records, 60, 10, seed=1)[1] != held
    with pytest.raises(ValueError, match="only 100 available"):
        imdb.split_reviews(records, 95, 10, seed=0)


def test_perplexity_and_what_sampling_reports(tok, policy):
    blocks = lm.pack_texts(tok, corpus.generate_reviews(40, 0), 16)
    assert (blocks == tok.eos_token_id).sum() >= 20  # every text ends with <eos>
    one = blocks[:5]
    with torch.no_grad():
        assert lm.perplexity(policy, one, batch_size=5) == pytest.approx(float(torch.exp(lm.lm_loss(policy, one))), rel=1e-5)
    assert lm.perplexity(policy, blocks, batch_size=7) == pytest.approx(lm.perplexity(policy, blocks, batch_size=64), rel=1e-5)
    prompts = ["the movie", "i watched it", "what a"] * 3
    texts, info = lm.sample(policy, tok, prompts, 6, seed=2, return_info=True)
    assert texts == lm.sample(policy, tok, prompts, 6, seed=2)
    n, stopped = info["new_tokens"], info["stopped"]
    assert n.shape == stopped.shape == (9,) and bool((n <= 6).all()) and bool((n[~stopped] == 6).all())
    assert all(len(tok(t)["input_ids"]) <= int(k) for t, k in zip(texts, n))  # special tokens are not decoded
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        lm.sample(policy, tok, prompts, 63)


def test_positiveness_scorer_is_chosen_by_profile(tmp_path, tok):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    reviews = corpus.generate_reviews(300, seed=0)
    labels = [int(scorers.VaderPositiveness()([r])[0] > 0.5) for r in reviews]
    clf = scorers.train_sentiment_classifier(reviews, labels, seed=0, min_df=1, prefix_words=None)
    folder = scorers.save_sentiment_classifier(clf, tmp_path / "clf")
    traits = scorers.trait_scorers("cpu", tok, 10, folder, "unused/hub-id", vader=True)
    assert set(traits) == {"positiveness", "conciseness", "vader"}
    assert isinstance(traits["positiveness"], scorers.TfidfPositiveness)
    assert isinstance(traits["vader"], scorers.VaderPositiveness)
    texts = ["the movie was wonderful .", "the plot was awful ."]
    p = traits["positiveness"](texts)
    assert p.shape == (2,) and p[0] > p[1]
    assert set(scorers.trait_scorers("cpu", tok, 10, folder, "x")) == {"positiveness", "conciseness"}
    acc = scorers.classifier_accuracy(clf, reviews, labels, cuts=(None, 3))
    assert set(acc) == {"full", 3} and acc["full"] > 0.9
    # the paper profile reads a transformers sequence classifier (here a local stand-in)
    model = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=16, n_head=2, num_labels=2,
                                                     pad_token_id=tok.pad_token_id, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                                                     label2id={"NEGATIVE": 0, "POSITIVE": 1}))
    model.save_pretrained(tmp_path / "hub")
    tok.save_pretrained(tmp_path / "hub")
    paper = scorers.positiveness_scorer("paper", "unused", str(tmp_path / "hub"))
    assert isinstance(paper, scorers.ClassifierPositiveness) and paper(texts).shape == (2,)
    with pytest.raises(ValueError, match="unknown profile 'gpu'"):
        scorers.positiveness_scorer("gpu", folder, "x")
    with pytest.raises(scorers.SentimentClassifierError, match="missing"):
        scorers.positiveness_scorer("cpu", tmp_path / "nowhere", "x")


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
