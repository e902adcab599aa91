"""Soups / alpaca / Koala loaders on the generated stand-in, malformed records, URL caching."""
import functools
import hashlib
import http.server
import json
import threading
import time
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
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
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
    first = soups.load_soups(soups.soups_files(url, dims=["P1A"]), cache_dir=cache)
    folder = soups.fetch(f"{url}/data.zip", cache)
    assert (folder / "data" / "P1B.json").exists()
    with pytest.raises(OSError, match="could not download .*missing.json"):
        soups.fetch(f"{url}/missing.json", cache)
    assert not list(cache.glob("*.part")) and not list(cache.glob(".*"))
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


# -- downloads: bounded, checked, cached outside the stage -------------------------------------
@pytest.fixture
def nasty_server():
    """Local endpoints that misbehave: /endless (no length, never ends), /huge (announces 10^12
    bytes), /short (promises 10 lines, sends 3), /drip (a byte every 20 ms), /to?u=URL (302 to URL),
    /ok.json (a good soups file); records the paths asked for."""
    rec = {"user_input": "q", "completion_a": "a", "completion_b": "b"}
    line = (json.dumps(rec) + "\n").encode()
    state = {"asked": [], "good": line * 2}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            state["asked"].append(self.path)
            try:
                if self.path == "/endless":
                    self.send_response(200)
                    self.end_headers()
                    while True:
                        self.wfile.write(b"x" * 65536)
                elif self.path == "/huge":
                    self.send_response(200)
                    self.send_header("Content-Length", str(10 ** 12))
                    self.end_headers()
                    self.wfile.write(b"x" * 1000)
                elif self.path == "/short":
                    self.send_response(200)
                    self.send_header("Content-Length", str(10 * len(line)))
                    self.end_headers()
                    self.wfile.write(line * 3)
                elif self.path == "/drip":
                    self.send_response(200)
                    self.end_headers()
                    for _ in range(2000):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.02)
                elif self.path.startswith("/to?u="):
                    self.send_response(302)
                    self.send_header("Location", self.path[len("/to?u="):])
                    self.end_headers()
                elif self.path == "/ok.json":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(state["good"])))
                    self.end_headers()
                    self.wfile.write(state["good"])
                else:
                    self.send_error(404)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def _no_leftovers(cache):
    return [p.name for p in cache.rglob("*")] if cache.exists() else []


def test_download_size_cap(tmp_path, nasty_server):
    url, _ = nasty_server
    cache = tmp_path / "cache"
    t = time.monotonic()
    with pytest.raises(OSError, match=r"could not download .*/endless: more than 1000000 bytes") as err:
        soups.fetch(f"{url}/endless", cache, max_bytes=1_000_000)
    assert time.monotonic() - t < 10 and "\n" not in str(err.value)
    with pytest.raises(OSError, match=r"/huge: its Content-Length is 1000000000000 bytes, more than the cap"):
        soups.fetch(f"{url}/huge", cache)  # the default cap refuses before reading
    assert _no_leftovers(cache) == []


def test_download_overall_deadline(tmp_path, nasty_server):
    url, _ = nasty_server
    t = time.monotonic()
    with pytest.raises(OSError, match=r"/drip: did not finish within 0\.5 s"):
        soups.fetch(f"{url}/drip", tmp_path / "cache", timeout=5.0, deadline=0.5)  # each byte beats the socket timeout
    assert time.monotonic() - t < 4
    assert _no_leftovers(tmp_path / "cache") == []


def test_a_short_body_is_refused(tmp_path, nasty_server):
    url, _ = nasty_server
    with pytest.raises(OSError, match=r"/short: got 186 of the 620 bytes its Content-Length promised"):
        soups.fetch(f"{url}/short", tmp_path / "cache")
    assert _no_leftovers(tmp_path / "cache") == []


def test_sha256_pinning(tmp_path, nasty_server):
    url, state = nasty_server
    cache = tmp_path / "cache"
    good = hashlib.sha256(state["good"]).hexdigest()
    with pytest.raises(ValueError, match=rf"/ok\.json: sha256 is {good}, expected 0{{64}}"):
        soups.fetch(f"{url}/ok.json", cache, sha256="0" * 64)
    assert _no_leftovers(cache) == []  # nothing cached
    path = soups.fetch(f"{url}/ok.json", cache, sha256=good.upper())
    assert path.read_bytes() == state["good"]
    assert soups.fetch(f"{url}/ok.json#sha256={good}", cache) == path  # pinned in the URL: same cache entry
    path.write_bytes(b"tampered")  # a cached copy that no longer matches its pin is fetched again
    assert soups.fetch(f"{url}/ok.json", cache, sha256=good).read_bytes() == state["good"]
    with pytest.raises(ValueError, match="not a sha256"):
        soups.fetch(f"{url}/ok.json", cache, sha256="abc")
    files = {"P1A": f"{url}/ok.json"}
    assert len(soups.load_soups(files, cache_dir=cache, sha256={"P1A": good})["P1A"]) == 2
    with pytest.raises(ValueError, match="sha256 is"):
        soups.load_soups(files, cache_dir=tmp_path / "other", sha256={"P1A": "1" * 64})


def test_plain_http_only_for_this_machine(tmp_path, nasty_server, monkeypatch):
    url, state = nasty_server

    def no_network(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr(soups.urllib.request.OpenerDirector, "open", no_network)
    with pytest.raises(ValueError, match=r"http://data\.example\.org/P1A\.json: plain http is refused"):
        soups.fetch("http://data.example.org/P1A.json", tmp_path / "cache")
    with pytest.raises(AssertionError, match="network used"):  # allowed: it goes on to download
        soups.fetch("http://data.example.org/P1A.json", tmp_path / "cache", allow_http=True)
    monkeypatch.setenv("PLURALIGN_ALLOW_HTTP", "1")
    with pytest.raises(AssertionError, match="network used"):
        soups.fetch("http://data.example.org/P1A.json", tmp_path / "cache")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"redirected .*to http://10\.1\.2\.3:9/x\.json: plain http is refused"):
        soups.fetch(f"{url}/to?u=http://10.1.2.3:9/x.json", tmp_path / "cache")  # a local server, a remote target
    assert soups.fetch(f"{url}/to?u={url}/ok.json", tmp_path / "cache").read_bytes() == state["good"]


def test_the_cache_lives_outside_the_stage(tmp_path, nasty_server, monkeypatch):
    url, state = nasty_server
    monkeypatch.setenv("PLURALIGN_CACHE", str(tmp_path / "mine"))
    assert soups.default_cache_dir() == tmp_path / "mine"
    path = soups.fetch(f"{url}/ok.json")
    assert path.parent == tmp_path / "mine" and path.read_bytes() == state["good"]
    assert soups.resolve(f"{url}/ok.json") == path and state["asked"].count("/ok.json") == 1  # reused
    assert len(soups.load_soups({"P1A": f"{url}/ok.json"})["P1A"]) == 2
    monkeypatch.delenv("PLURALIGN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert soups.default_cache_dir() == tmp_path / "xdg" / "pluralign" / "soups"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert soups.default_cache_dir() == tmp_path / "home" / ".cache" / "pluralign" / "soups"


def _zip_to(www, name, members):
    with zipfile.ZipFile(www / name, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for member, data in members.items():
            z.writestr(member, data)


def test_zip_extraction_is_capped_and_contained(tmp_path, http_dir):
    www, url, _ = http_dir
    cache = tmp_path / "cache"
    _zip_to(www, "bomb.zip", {"data/P1A.json": b"0" * 3_000_000})  # compresses to a few kB
    with pytest.raises(ValueError, match=r"bomb\.zip would unpack to 3000000 bytes, more than the cap of 1000000"):
        soups.fetch(f"{url}/bomb.zip", cache, max_unzipped_bytes=1_000_000)
    assert not [p for p in cache.iterdir() if p.is_dir()]  # nothing extracted
    _zip_to(www, "evil.zip", {"../../escape.json": b"[]"})
    with pytest.raises(ValueError, match=r"evil\.zip: member '\.\./\.\./escape\.json' would unpack outside"):
        soups.fetch(f"{url}/evil.zip", cache)
    assert not (tmp_path / "escape.json").exists()
    _zip_to(www, "ok.zip", {"data/P1A.json": b"[1]", "data/P1B.json": b"[2]"})
    assert (soups.fetch(f"{url}/ok.zip", cache) / "data" / "P1B.json").read_bytes() == b"[2]"
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_zip_member_larger_than_declared_is_stopped_while_extracting(tmp_path):
    """A lying header (declared size smaller than the real data) is caught as it is unpacked."""
    src = tmp_path / "lie.zip"
    _zip_to(tmp_path, "lie.zip", {"a.json": b"1" * 50_000})
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = z.infolist()[0]
    # patch the uncompressed size (local header at 22, central directory at 24) to 100 bytes
    raw[info.header_offset + 22: info.header_offset + 26] = (100).to_bytes(4, "little")
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24: cd + 28] = (100).to_bytes(4, "little")
    src.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"lie\.zip: member 'a\.json' (unpacks to more than|is corrupt)"):
        soups.extract_zip(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- data files: one line naming the file -------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b"[]", "holds no records"),
    (b"[\n]\n", "holds no records"),
    (b'{"data": [{"user_input": "q", "completion_a": "a", "completion_b": "b"}]}',
     r"is one JSON object \(keys: data\), not a JSON list of records or JSON lines"),
    (b'{\n "P1A": [\n  {"user_input": "q"}\n ]\n}\n', r"is one JSON object \(keys: P1A\), not a JSON list of records"),
    (b'[{"user_input": "caf\xe9", "completion_a": "a", "completion_b": "b"}]',
     r"is not UTF-8 text \(byte 0xe9 at offset 20\)"),
    (b"\xff\xfe[\x00]\x00", r"is not UTF-8 text \(byte 0xff at offset 0\)"),
])
def test_unusable_soups_and_prompt_files_are_named(tmp_path, content, message):
    path = tmp_path / "P1A.json"
    path.write_bytes(content)
    for call in (lambda: soups.load_soups({"P1A": str(path)}), lambda: soups.load_questions(path),
                 lambda: soups.alpaca_prompts(path), lambda: soups.koala_prompts(path)):
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "P1A.json"
    rec = {"user_input": "q", "completion_a": "a", "completion_b": "b"}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([rec]).encode())
    assert len(soups.load_soups({"P1A": str(path)})["P1A"]) == 1


@pytest.mark.parametrize("pattern, message", [
    ("{name}.json", r"soups_pattern '\{name\}\.json': unknown field \{name\} \(the only field is \{dim\}"),
    ("{0}.json", r"soups_pattern '\{0\}\.json': unknown field \{0\}"),
    ("{dim.x}.json", r"soups_pattern '\{dim\.x\}\.json' is not a valid pattern"),
    ("{dim.json", r"soups_pattern '\{dim\.json' is not a valid pattern"),
    ("data.json", r"soups_pattern 'data\.json' has no \{dim\}: every dimension would read the same file"),
])
def test_bad_soups_pattern_is_named(pattern, message):
    with pytest.raises(ValueError, match=message) as err:
        soups.soups_files("/data", ("P1A", "P1B"), pattern)
    assert "\n" not in str(err.value)
    assert soups.soups_files("/data", ("P1A",), "raw/{dim}_train.jsonl") == {"P1A": "/data/raw/P1A_train.jsonl"}
