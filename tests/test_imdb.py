"""Building blocks of the real-text GPT-2 experiment on the IMDb reviews in data/raw/: prompts cut
as the public re-implementation does, a byte-level BPE tokenizer trained on reviews, and the
TF-IDF + logistic-regression positiveness classifier saved without pickle."""
import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from pluralign import imdb, lm, rawdata, scorers
from pluralign.scorers import SentimentClassifierError


@pytest.fixture(scope="module")
def train():
    return rawdata.imdb("train")


@pytest.fixture(scope="module")
def test_split():
    return rawdata.imdb("test")


@pytest.fixture(scope="module")
def texts(train):
    return [r["text"] for r in train]


@pytest.fixture(scope="module")
def bpe_texts(texts):
    rng = np.random.default_rng(0)
    return [texts[i] for i in rng.choice(len(texts), 1500, replace=False)]


@pytest.fixture(scope="module")
def bpe(bpe_texts):
    return imdb.train_bpe_tokenizer(bpe_texts, vocab_size=600)


@pytest.fixture(scope="module")
def clf(train):
    rng = np.random.default_rng(0)
    idx = rng.choice(len(train), 3000, replace=False)  # the files are sorted by label
    return scorers.train_sentiment_classifier([train[i]["text"] for i in idx], [train[i]["label"] for i in idx], seed=0)


@pytest.fixture(scope="module")
def held_out(test_split):
    rng = np.random.default_rng(1)
    idx = rng.choice(len(test_split), 1000, replace=False)
    return [test_split[i]["text"] for i in idx], np.array([test_split[i]["label"] for i in idx])


# --- prompts ---------------------------------------------------------------------------------------

def test_prompts_are_the_first_2_to_8_words_of_long_reviews(texts):
    prompts, idx = imdb.make_prompts(texts, 3000, seed=0, return_indices=True)
    assert len(prompts) == 3000 and len(set(idx)) == 3000
    counts = Counter(len(p.split()) for p in prompts)
    assert set(counts) == set(range(2, 9))  # every length drawn, none outside [2, 8]
    assert min(counts.values()) > 3000 / 7 * 0.8  # uniform
    for p, i in zip(prompts, idx):
        review = texts[i]
        assert len(review) > 200
        assert review.startswith(p) and p == p.strip()
        assert review[len(p)].isspace()  # cut at a word boundary
        assert p.split() == review.split()[: len(p.split())]
    # the seeded order mixes both labels (the file is sorted by label)
    assert 0.4 < np.mean([i < 12_500 for i in idx]) < 0.6


def test_prompts_are_seeded_and_nested(texts):
    a = imdb.make_prompts(texts, 500, seed=3)
    assert a == imdb.make_prompts(texts, 500, seed=3)
    assert a != imdb.make_prompts(texts, 500, seed=4)
    assert imdb.make_prompts(texts, 2000, seed=3)[:500] == a  # a larger n extends a smaller one


def test_prompts_use_only_reviews_longer_than_min_chars():
    long = ("word " * 60).strip()  # 299 characters
    exactly = "x" * 196 + " end"   # 200 characters: not longer than 200, excluded
    reviews = ["short review here", exactly, long + " one", "tiny", long + " two"]
    prompts, idx = imdb.make_prompts(reviews, None, seed=0, return_indices=True)
    assert sorted(idx) == [2, 4] and all(set(p.split()) == {"word"} for p in prompts)
    assert imdb.make_prompts(reviews, 3, seed=0, min_chars=199, return_indices=True)[1].count(1) == 1
    with pytest.raises(ValueError, match="only 2 of 5 reviews are longer than 200 characters"):
        imdb.make_prompts(reviews, 3, seed=0)
    with pytest.raises(ValueError, match="min_tokens"):
        imdb.make_prompts(reviews, 1, seed=0, min_tokens=5, max_tokens=4)


def test_prompts_in_tokenizer_units_end_on_a_word(texts, bpe):
    # the re-implementation's rule with a tokenizer: k tokens, extended to the end of the word
    assert imdb._cut_tokens("Unbelievably overwrought melodrama.", 1, bpe) == "Unbelievably"
    assert len(bpe("Unbelievably", add_special_tokens=False)["input_ids"]) > 1
    prompts, idx = imdb.make_prompts(texts, 500, seed=0, tokenizer=bpe, return_indices=True)
    for p, i in zip(prompts, idx):
        review = texts[i]
        assert review.startswith(p) and p
        assert not (p[-1].isalnum() and review[len(p)].isalnum())  # never inside a word
        assert len(bpe(p, add_special_tokens=False)["input_ids"]) >= 2
    assert prompts == imdb.make_prompts(texts, 500, seed=0, tokenizer=bpe)


# --- reviews and pretraining passages --------------------------------------------------------------

def test_load_reviews_gives_the_verified_copy_one_review_per_line(train):
    reviews = imdb.load_reviews("train")
    assert len(reviews) == 25_000 and sum(r["label"] for r in reviews) == 12_500
    assert all(len(r["text"].splitlines()) == 1 and r["text"] for r in reviews)  # U+0085 would split 330 of them
    changed = [i for i, (r, t) in enumerate(zip(reviews, train)) if r["text"] != t["text"]]
    assert len(changed) == 330 and all(reviews[i]["text"] == re.sub("\x85+", " ", train[i]["text"]) for i in changed)
    assert [r["label"] for r in reviews] == [t["label"] for t in train]


def test_passages_of_real_reviews_end_at_sentence_ends(texts):
    parts = imdb.passages(texts[:400], 3, seed=0)
    words = np.array([len(p.split()) for p in parts])
    assert 15 < np.median(words) < 60 and len(parts) > 1500  # a few sentences each, ~13 sentences per review
    assert np.mean([p[-1] in ".!?\"')" for p in parts]) > 0.9  # whole sentences (a review's tail may lack a stop)


# --- BPE tokenizer ---------------------------------------------------------------------------------

def test_bpe_tokenizer_conventions_match_the_word_tokenizer(bpe):
    word = lm.build_word_tokenizer(["movie", "great"])
    for name in ("pad_token", "bos_token", "eos_token", "unk_token"):
        assert getattr(bpe, name) == getattr(word, name)
        assert getattr(bpe, name + "_id") == getattr(word, name + "_id")
    assert bpe.pad_token_id != bpe.eos_token_id and bpe.padding_side == "left"
    assert len(bpe) == 600
    text = "Héllo wörld — it's  GREAT!! 😀 10/10"
    ids = bpe(text)["input_ids"]
    assert bpe.decode(ids) == text  # byte level: any text round-trips, nothing unknown
    assert bpe.bos_token_id not in ids and bpe.eos_token_id not in ids and bpe.unk_token_id not in ids
    assert bpe.convert_ids_to_tokens(bpe("great<eos>")["input_ids"])[-1] == "<eos>"
    ids, mask = lm.encode_prompts(bpe, ["a film", "I watched this movie"])
    assert ids[0, 0] == bpe.pad_token_id and ids[1, 0] == bpe.bos_token_id and mask[0, 0] == 0
    assert torch.equal(scorers.Conciseness(bpe, 100)([""]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="vocab_size must be >= 260"):
        imdb.train_bpe_tokenizer(["a b"], vocab_size=100)


def test_bpe_tokenizer_is_deterministic_across_processes(tmp_path, bpe, bpe_texts):
    assert imdb.train_bpe_tokenizer(bpe_texts, vocab_size=600).backend_tokenizer.to_str() == bpe.backend_tokenizer.to_str()
    # Rust hash maps are seeded per process: check a fresh process gets the same vocab and merges
    (tmp_path / "texts.json").write_text(json.dumps(bpe_texts))
    code = ("import json, sys; from pluralign import imdb; "
            f"t = imdb.train_bpe_tokenizer(json.load(open({str(tmp_path / 'texts.json')!r})), vocab_size=600); "
            "sys.stdout.write(t.backend_tokenizer.to_str())")
    env = {"PYTHONPATH": str(imdb.__file__).rsplit("/pluralign/", 1)[0], "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True)
    assert json.loads(out.stdout)["model"] == json.loads(bpe.backend_tokenizer.to_str())["model"]


def test_bpe_tokenizer_save_load_round_trip(tmp_path, bpe, texts):
    from transformers import AutoTokenizer

    bpe.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    sample = texts[:50] + ["", "  two  spaces ", "<pad><bos>x<eos>"]
    assert again(sample)["input_ids"] == bpe(sample)["input_ids"]
    assert again.get_vocab() == bpe.get_vocab() and again.padding_side == "left"
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)
    loaded = lm.load_tokenizer(str(tmp_path))  # the pipeline's loader keeps it as is
    assert len(loaded) == len(bpe) and loaded.pad_token_id != loaded.eos_token_id


# --- positiveness classifier -----------------------------------------------------------------------

def test_classifier_on_a_subsample_beats_80_percent(clf, held_out):
    x, y = held_out
    p = clf(x)
    assert p.shape == (1000,) and p.dtype == np.float64 and ((p > 0) & (p < 1)).all()
    assert ((p > 0.5) == y).mean() > 0.8
    assert clf(["A wonderful, moving film. Brilliant acting."])[0] > 0.5 > clf(["Awful, boring, a waste of time."])[0]
    assert clf([]).shape == (0,)
    with pytest.raises(TypeError, match="list of texts"):
        clf("one string")


def test_classifier_training_is_seeded_and_checks_labels(train):
    rows = train[::25]  # 1000 reviews, both labels
    x, y = [r["text"] for r in rows], [r["label"] for r in rows]
    a = scorers.train_sentiment_classifier(x, y, seed=5)
    b = scorers.train_sentiment_classifier(x, y, seed=5)
    assert np.array_equal(a(x[:100]), b(x[:100]))
    with pytest.raises(ValueError, match="both present"):
        scorers.train_sentiment_classifier(x[:10], [1] * 10, seed=0)
    with pytest.raises(ValueError, match="10 texts but 9 labels"):
        scorers.train_sentiment_classifier(x[:10], y[:9], seed=0)


def test_saved_classifier_reloads_identically_and_holds_no_pickle(tmp_path, clf, held_out):
    x, _ = held_out
    x = x + ["", "great great great", "Héllo 😀", "zzzz qqqq"]
    folder = scorers.save_sentiment_classifier(clf, tmp_path / "clf")
    loaded = scorers.load_scorer(folder)
    assert np.allclose(loaded(x), clf(x), rtol=0, atol=1e-12)
    assert loaded.settings == clf.settings and loaded.n_features == clf.n_features
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["sentiment_classifier.json", "vocabulary.json", "weights.npz"]
    for f in folder.iterdir():
        assert not f.read_bytes().startswith(b"\x80")  # no pickle stream
    with np.load(folder / "weights.npz", allow_pickle=False) as z:  # no object arrays inside
        assert sorted(z.files) == ["coef", "idf", "intercept"] and all(z[k].dtype == np.float64 for k in z.files)
    first = {f.name: f.read_bytes() for f in folder.iterdir()}
    scorers.save_sentiment_classifier(loaded, tmp_path / "again")
    assert {f.name: f.read_bytes() for f in (tmp_path / "again").iterdir()} == first  # deterministic output
    # the scorer interface picks the saved folder up
    s = scorers.make_scorer("positiveness", classifier=str(folder))
    assert isinstance(s, scorers.TfidfPositiveness) and s.name == "positiveness"
    assert torch.allclose(s(x[:20]).double(), torch.from_numpy(clf(x[:20])), atol=1e-6)


def _one_line_error(path, match):
    with pytest.raises(SentimentClassifierError) as e:
        scorers.load_scorer(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and match in msg, msg


def test_load_scorer_on_missing_or_corrupt_folders(tmp_path, clf):
    _one_line_error(tmp_path / "nowhere", "missing")
    (tmp_path / "empty").mkdir()
    _one_line_error(tmp_path / "empty", "no sentiment_classifier.json")
    assert not scorers.is_saved_classifier(tmp_path / "empty")  # make_scorer sends such folders to transformers
    good = scorers.save_sentiment_classifier(clf, tmp_path / "good")

    def damaged(name, edit):
        import shutil

        d = tmp_path / f"bad_{name}_{len(list(tmp_path.iterdir()))}"
        shutil.copytree(good, d)
        edit(d / name)
        return d

    _one_line_error(damaged("sentiment_classifier.json", lambda f: f.write_text("{not json")), "not valid JSON")
    _one_line_error(damaged("sentiment_classifier.json", lambda f: f.write_text('{"format": "other"}')), "format 'other'")
    _one_line_error(damaged("weights.npz", lambda f: f.write_bytes(f.read_bytes()[:1000])), "weights.npz does not match the sha256")
    _one_line_error(damaged("vocabulary.json", lambda f: f.write_text('["a"]')), "vocabulary.json does not match the sha256")
    _one_line_error(damaged("weights.npz", lambda f: f.unlink()), "weights.npz is missing")
    (tmp_path / "file").write_text("x")
    _one_line_error(tmp_path / "file", "not a folder")
