"""The real data in data/raw/ verifies and loads with the documented counts and fields; damaged
copies fail with one line naming the file."""
import dataclasses
import gzip
import json
import shutil
from collections import Counter

import pytest

from pluralign import rawdata
from pluralign.rawdata import MANIFEST, RawDataError

TRAIN = "imdb/aclImdb_train.jsonl.gz"
ALPACA = "instructions/alpaca_cleaned_51924.jsonl.gz"
KOALA = "instructions/koala_eval_50.json"


@pytest.fixture(scope="module")
def train():
    return rawdata.imdb("train")


def test_every_manifest_file_is_in_the_project_and_verifies():
    assert rawdata.raw_dir().name == "raw" and rawdata.raw_dir().parent.name == "data"
    for name, entry in MANIFEST.items():
        path = rawdata.verify(name)
        assert path.stat().st_size == entry.size


def test_imdb_train(train):
    assert len(train) == 25_000
    assert Counter(r["label"] for r in train) == {1: 12_500, 0: 12_500}
    assert all(set(r) == set(rawdata.IMDB_FIELDS) and r["split"] == "train" for r in train)
    assert not any("<br" in r["text"].lower() for r in train)
    assert all(r["text"] == r["text"].strip() and r["text"] for r in train)
    assert all((r["rating"] >= 7) == (r["label"] == 1) for r in train)


def test_imdb_test():
    test = rawdata.imdb("test")
    assert len(test) == 20_000 and Counter(r["label"] for r in test) == {1: 10_000, 0: 10_000}
    assert {r["split"] for r in test} == {"test"} and not any("<br />" in r["text"] for r in test)


def test_imdb_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="unsup"):
        rawdata.imdb("unsup")


def test_clean_review_is_exactly_documented():
    assert rawdata.clean_review("Good.<br /><br />Bad.") == "Good. Bad."
    assert rawdata.clean_review("a <BR/> b<br>c <i>x</i><br /> ") == "a b c <i>x</i>"


def test_instruction_sets():
    alpaca = rawdata.alpaca()
    assert len(alpaca) == 51_924 and sum(bool(r["input"]) for r in alpaca) == 19_935
    assert all({"idx", "instruction", "input", "output"} <= set(r) for r in alpaca)
    koala = rawdata.koala()
    assert len(koala) == 50 and [r["id"] for r in koala] == [str(i) for i in range(50)]
    assert all(r["prompt"].strip() for r in koala)
    ev = rawdata.alpaca_eval()
    assert len(ev) == 805 and [r["idx"] for r in ev] == list(range(805))
    assert sum(len(r["outputs"]) == 16 for r in ev) == 802
    assert all({"text_davinci_003", "tulu-2-dpo-7b"} <= set(r["outputs"]) for r in ev)
    assert Counter(r["gpt4_pref_davinci003_vs_tulu2dpo7b"] for r in ev).keys() == {1, 2}


def test_verification_is_cached(monkeypatch):
    rawdata.verify(TRAIN)
    monkeypatch.setattr(rawdata, "sha256_of", lambda p: pytest.fail("rehashed a verified file"))
    rawdata.verify(TRAIN)


# ---- damaged copies: each fails in one line naming the file

def one_line(err, name):
    msg = str(err.value)
    assert "\n" not in msg and name in msg, msg
    return msg


def copy_of(tmp_path, name):
    dst = tmp_path / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rawdata.path_of(name), dst)
    return dst


def trusting(path, name):
    """A manifest whose entry for `name` matches the file at `path`: the checksum passes, so what
    is checked next is the records."""
    entry = dataclasses.replace(MANIFEST[name], sha256=rawdata.sha256_of(path), size=path.stat().st_size)
    return {**MANIFEST, name: entry}


def test_missing_file_names_where_it_looked(tmp_path):
    with pytest.raises(RawDataError) as err:
        rawdata.koala(root=tmp_path)
    msg = one_line(err, KOALA)
    assert "missing" in msg and str(tmp_path / "instructions") in msg


def test_truncated_file(tmp_path):
    path = copy_of(tmp_path, TRAIN)
    with open(path, "r+b") as f:
        f.truncate(1_000_000)
    with pytest.raises(RawDataError) as err:
        rawdata.imdb("train", root=tmp_path)
    msg = one_line(err, TRAIN)
    assert "truncated" in msg and MANIFEST[TRAIN].sha256[:12] in msg and "1,000,000 bytes" in msg


def test_one_byte_altered(tmp_path):
    path = copy_of(tmp_path, KOALA)
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(RawDataError) as err:
        rawdata.verify(KOALA, root=tmp_path)
    msg = one_line(err, KOALA)
    assert "sha256 mismatch" in msg and "altered" in msg and rawdata.sha256_of(path)[:12] in msg


def test_truncated_gzip_stream_is_unreadable(tmp_path):
    path = copy_of(tmp_path, ALPACA)
    with open(path, "r+b") as f:
        f.truncate(200_000)
    with pytest.raises(RawDataError) as err:
        rawdata.alpaca(root=tmp_path, manifest=trusting(path, ALPACA))
    assert "unreadable gzip" in one_line(err, ALPACA)


def write_jsonl_gz(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def test_record_lacking_a_field(tmp_path):
    good = {"id": "train_pos_0", "split": "train", "label": 1, "rating": 9, "text": "Fine.<br />"}
    bad = {k: v for k, v in good.items() if k != "text"}
    path = tmp_path / TRAIN
    write_jsonl_gz(path, [json.dumps(good), json.dumps(good), json.dumps(bad)])
    with pytest.raises(RawDataError) as err:
        rawdata.imdb("train", root=tmp_path, manifest=trusting(path, TRAIN))
    msg = one_line(err, TRAIN)
    assert "line 3" in msg and "'text'" in msg


def test_non_json_line(tmp_path):
    path = tmp_path / ALPACA
    rec = json.dumps({"idx": 0, "instruction": "Say hi.", "input": "", "output": "hi"})
    write_jsonl_gz(path, [rec, '{"idx": 1, "instruction": "oops"'])
    with pytest.raises(RawDataError) as err:
        list(rawdata.parse_records(ALPACA, path, MANIFEST[ALPACA].fields))
    msg = one_line(err, ALPACA)
    assert "line 2: not JSON" in msg


def test_non_json_array_file(tmp_path):
    path = tmp_path / KOALA
    path.parent.mkdir(parents=True)
    path.write_text('[{"id": "0", "prompt": "hi"},\n {"id": "1" "prompt": "x"}]')
    with pytest.raises(RawDataError) as err:
        rawdata.koala(root=tmp_path, manifest=trusting(path, KOALA))
    assert "line 2: not JSON" in one_line(err, KOALA)


def test_wrong_record_count(tmp_path):
    path = tmp_path / KOALA
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"id": "0", "prompt": "hi"}]))
    with pytest.raises(RawDataError) as err:
        rawdata.koala(root=tmp_path, manifest=trusting(path, KOALA))
    assert "1 records, expected 50" in one_line(err, KOALA)
