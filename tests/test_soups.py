"""Soups / alpaca / Koala loaders on the generated stand-in, malformed records, URL caching."""
import functools
import http.server
import json
import threading
import zipfile

import pytest
import torch

from pluralign import soups
from pluralign.preferences import REQUIRED_COLUMNS, PreferencePairs


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    paths = soups.make_standin(root, seed=0, n_per_dim=120, n_prompts=20, n_eval=50)
    return root, paths


def test_standin_files_load_and_dimensions_really_disagree(standin):
    root, paths = standin
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [f"{d}.json" for d in soups.DIMENSIONS] + ["alpaca_prompts.json", "koala_eval_50.jsonl"])
    recs = soups.load_soups(soups.soups_files(root))
    assert set(recs) == set(soups.DIMENSIONS) and all(len(r) == 120 for r in recs.values())
    assert set(recs["P1A"][0]) == {"user_input", "completion_a", "completion_b"}

    def agree(dim, judged_by):  # share of dim's labels that judged_by's annotator would give
        return sum(soups.standin_score(judged_by, r["completion_a"]) > soups.standin_score(judged_by, r["completion_b"])
                   for r in recs[dim]) / len(recs[dim])

    for a, b in [("P1A", "P1B"), ("P2A", "P2B")]:  # simple vs technical words; short vs long
        assert agree(a, a) > 0.7 and agree(b, b) > 0.7  # BT label noise and ties lower these
        assert agree(a, b) < 0.2 and agree(b, a) < 0.2
    assert 0.25 < agree("P1A", "P2A") < 0.75  # complexity and length are drawn independently


def test_to_pairs_mixes_groups_by_users(standin):
    root, paths = standin
    recs = soups.load_soups(soups.soups_files(root, dims=("P1A", "P1B")))
    pairs = soups.to_pairs(recs, dims=("P1A", "P1B"), shares=(10 / 11, 1 / 11), n_users=22, per_user=5, seed=3)
    assert pairs.n_users == 22 and pairs.n_pairs == 110
    assert pairs.group.bincount().tolist() == [20, 2]
    assert pairs.user.bincount(minlength=22).tolist() == [5] * 22
    by_dim = {d: {(soups.tulu_prompt(r["user_input"]), r["completion_a"], r["completion_b"]) for r in recs[d]}
              for d in ("P1A", "P1B")}
    for i in range(pairs.n_pairs):  # each user's pairs come from its group's file
        dim = ("P1A", "P1B")[int(pairs.group[pairs.user[i]])]
        assert (pairs.prompt[i], pairs.chosen[i], pairs.rejected[i]) in by_dim[dim]
    assert pairs.prompt[0].startswith("<|user|>\n") and pairs.prompt[0].endswith(" \n<|assistant|>\n")
    assert len(set(zip(pairs.prompt, pairs.chosen))) == 110  # no pair dealt twice

    ds = pairs.to_dataset()
    assert set(REQUIRED_COLUMNS) <= set(ds.column_names)
    back = PreferencePairs.from_dataset(ds)
    assert back.n_pairs == 110 and torch.equal(back.group[back.user], pairs.group[pairs.user])

    again = soups.to_pairs(recs, dims=("P1A", "P1B"), shares=(10 / 11, 1 / 11), n_users=22, per_user=5, seed=3)
    assert again.chosen == pairs.chosen  # seeded
    default = soups.to_pairs(recs, n_users=22)  # as many as the fuller group allows: 120 // 20 = 6 each
    assert default.n_pairs == 22 * 6 and default.user.bincount().tolist() == [6] * 22
    with pytest.raises(ValueError, match=r"per_user=121 pairs does not fit: the data allow 1\.\.120"):
        soups.to_pairs(recs, n_users=2, shares=(0.5, 0.5), per_user=121)
    with pytest.raises(ValueError, match="'P2A' is not in the loaded data"):
        soups.to_pairs(recs, dims=("P1A", "P2A"))


def test_split_by_question_keeps_questions_apart(standin):
    root, _ = standin
    train, test = soups.split_by_question(soups.load_soups(soups.soups_files(root)), 0.3, seed=0)
    q_train = {r["user_input"] for rs in train.values() for r in rs}
    q_test = {r["user_input"] for rs in test.values() for r in rs}
    assert q_train and q_test and not q_train & q_test
    assert sum(map(len, train.values())) + sum(map(len, test.values())) == 8 * 120


def test_json_list_and_json_lines(tmp_path):
    rec = {"user_input": "q ?", "completion_a": "good .", "completion_b": "bad .", "extra": 1}
    (tmp_path / "a.json").write_text(json.dumps([rec, rec]))
    (tmp_path / "b.jsonl").write_text(json.dumps(rec) + "\n\n" + json.dumps(rec) + "\n")
    out = soups.load_soups({"P1A": str(tmp_path / "a.json"), "P1B": str(tmp_path / "b.jsonl")})
    assert out["P1A"] == out["P1B"] == [{k: rec[k] for k in soups.SOUPS_FIELDS}] * 2


@pytest.mark.parametrize("bad, message", [
    ({"user_input": "q", "completion_a": "a"}, "record 1: field 'completion_b' is missing"),
    ({"user_input": "q", "completion_a": "  ", "completion_b": "b"}, "record 1: field 'completion_a' is empty"),
    ({"user_input": "q", "completion_a": "a", "completion_b": 3}, "record 1: field 'completion_b' is not text"),
    ({"user_input": "", "completion_a": "a", "completion_b": "b"}, "record 1: field 'user_input' is empty"),
    (["q", "a", "b"], "record 1: is a list, not a JSON object"),
])
def test_malformed_record_names_file_record_and_field(tmp_path, bad, message):
    good = {"user_input": "q", "completion_a": "a", "completion_b": "b"}
    path = tmp_path / "P1A.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(ValueError) as err:
        soups.load_soups({"P1A": str(path)})
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_bad_json_and_missing_file(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"user_input": "q"}\n{oops\n')
    with pytest.raises(ValueError, match=r"x\.jsonl: line 2 is not valid JSON"):
        soups.read_records(tmp_path / "x.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        soups.load_soups({"P1A": str(tmp_path / "nope.json")})


def test_prompt_loaders(tmp_path, standin):
    _, paths = standin
    ppo = soups.alpaca_prompts(paths["prompts"])
    assert len(ppo) == 20 and all(p.startswith("<|user|>\n") and p.endswith(" \n<|assistant|>\n") for p in ppo)
    koala = soups.koala_prompts(paths["eval"], soups.PREFERENCES["P1A"])
    assert len(koala) == 50 and all(soups.PREFERENCES["P1A"] + " \n<|assistant|>\n" in p for p in koala)

    (tmp_path / "alpaca.json").write_text(json.dumps([
        {"instruction": "Translate this.", "input": "bonjour", "output": "hello"},
        {"instruction": "Name a colour.", "input": ""}, "plain prompt", {"prompt": "koala style"}]))
    assert soups.load_questions(tmp_path / "alpaca.json") == [
        "Translate this. bonjour", "Name a colour.", "plain prompt", "koala style"]
    assert soups.alpaca_prompts(tmp_path / "alpaca.json", limit=1) == ["<|user|>\nTranslate this. bonjour \n<|assistant|>\n"]
    (tmp_path / "koala.jsonl").write_text('{"id": "k1", "prompt": "Why?"}\n{"id": "k2", "text": "no prompt"}\n')
    with pytest.raises(ValueError, match=r"koala\.jsonl record 1: field 'prompt' is missing"):
        soups.load_questions(tmp_path / "koala.jsonl")


@pytest.fixture
def http_dir(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 (no network beyond this machine)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def test_urls_are_fetched_once_into_the_cache(tmp_path, http_dir):
    www, url, server = http_dir
    rec = {"user_input": "q", "completion_a": "a", "completion_b": "b"}
    (www / "P1A.json").write_text(json.dumps([rec]))
    with zipfile.ZipFile(www / "data.zip", "w") as z:
        z.writestr("data/P1B.json", json.dumps([rec, rec]))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="cache_dir"):
        soups.load_soups({"P1A": f"{url}/P1A.json"})
    first = soups.load_soups(soups.soups_files(url, dims=["P1A"]), cache_dir=cache)
    folder = soups.fetch(f"{url}/data.zip", cache)
    assert (folder / "data" / "P1B.json").exists()
    with pytest.raises(OSError, match="could not download .*missing.json"):
        soups.fetch(f"{url}/missing.json", cache)
    assert not list(cache.glob("*.part"))
    server.shutdown()  # from now on only the cache can answer
    assert soups.load_soups({"P1A": f"{url}/P1A.json"}, cache_dir=cache) == first == {"P1A": [rec]}
    assert soups.fetch(f"{url}/data.zip", cache) == folder


def test_import_does_not_touch_the_network(monkeypatch):
    import importlib
    import urllib.request

    def no_network(*a, **k):
        raise AssertionError("network used at import")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    importlib.reload(soups)
