"""Data for the Tulu2-7B stage: the RLPHF "personalized soups" pairwise preferences (Jang et
al., 2023), alpaca-style PPO prompts and the Koala evaluation prompts — plus a generated stand-in
in the same raw formats, kept as a test fixture only (the `cpu` profile now runs on real text:
:mod:`pluralign.tulu_data`).

Soups files, one per preference dimension (P1A … P3D), hold records
``{"user_input": question, "completion_a": chosen, "completion_b": rejected}`` as a JSON list
or as JSON lines.  The reward model reads ``TEMPLATE.format(question=…) + response``.

Users are simulated the way the GPT-2 stage does it (:func:`pluralign.preferences.label_pairs`):
``n_users`` users split between the groups by ``shares`` (10:1 → [10/11, 1/11]), every user
labels ``per_user`` pairs, and a user of group g takes its pairs from the file of dimension
``dims[g]``.  Default pairing: P1A (elementary, majority) vs P1B (expert, minority) — the two
annotator instructions of one dimension, which disagree most; the paper's own pairing is not
recorded in shared/PAPERS.md, so it is a parameter (``dims``).

Nothing here touches the network at import time; :func:`fetch` downloads an https URL with
urllib only when called, into a cache folder outside any stage's staging folder
(:func:`default_cache_dir`: ``$PLURALIGN_CACHE`` or ``~/.cache/pluralign/soups``), and reuses the
cached copy afterwards.  Downloads are bounded (a size cap, an overall deadline, the body checked
against its Content-Length, optional sha256 pins) and written atomically; zip archives are
unpacked under a size cap.  A data file that cannot be used (empty, not UTF-8, no records, one
JSON object instead of a list) raises one ValueError line naming it.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import random
import re
import shutil
import string
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

import torch

from .preferences import PreferencePairs
from .simulate import group_sizes

__all__ = ["DIMENSIONS", "PREFERENCES", "TEMPLATE", "tulu_prompt", "default_cache_dir", "fetch", "extract_zip",
           "resolve", "read_records",
           "soups_files", "load_soups", "split_by_question", "to_pairs", "load_questions", "alpaca_prompts",
           "koala_prompts", "standin_score", "standin_vocabulary", "make_standin"]

from .checks import SOUPS_DIMENSIONS as DIMENSIONS  # noqa: E402  (one list; checks stays torch-free)
# What each dimension's annotators were asked to prefer, as an instruction to the policy (the
# evaluation appends it to the Koala prompt).  P1 expertise, P2 informativeness, P3 style.
PREFERENCES = {
    "P1A": "Generate a response that can be easily understood by an elementary school student.",
    "P1B": "Generate a response that only a PhD student in that specific field could understand.",
    "P2A": "Generate a response that is concise and to the point, without being verbose.",
    "P2B": "Generate a response that is very informative, without missing any background information.",
    "P3A": "Generate a response that is friendly, witty, funny, and humorous, like a close friend.",
    "P3B": "Generate a response in an unfriendly manner.",
    "P3C": "Generate a response in a sassy manner.",
    "P3D": "Generate a response in a sarcastic manner.",
}
TEMPLATE = "<|user|>\n{question} \n<|assistant|>\n"  # Tulu's chat format, as the authors' RM/PPO code writes it
SOUPS_FIELDS = ("user_input", "completion_a", "completion_b")


def tulu_prompt(question: str, preference: str | None = None) -> str:
    """The Tulu prompt for a question, with a preference instruction appended if given."""
    return TEMPLATE.format(question=question if preference is None else f"{question} {preference}")


# -- files: local paths or http(s) URLs ------------------------------------------------------
MAX_DOWNLOAD_BYTES = 2 ** 30        # 1 GiB per file; env PLURALIGN_MAX_DOWNLOAD_BYTES overrides
DOWNLOAD_DEADLINE_S = 1800.0        # a whole download, all reads together; env PLURALIGN_DOWNLOAD_DEADLINE_S
MAX_UNZIPPED_BYTES = 4 * 2 ** 30    # all members of one zip together; env PLURALIGN_MAX_UNZIPPED_BYTES
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


class DownloadError(OSError):
    """A download that failed or was refused (too big, too slow, cut short)."""


def _is_url(source: str) -> bool:
    return str(source).startswith(("http://", "https://"))


def _env_number(name: str, default, kind=float):
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"environment variable {name}={raw!r} must be > 0")
    return value


def default_cache_dir() -> Path:
    """Where downloads are kept between runs (never inside a stage's staging folder):
    ``$PLURALIGN_CACHE``, else ``$XDG_CACHE_HOME/pluralign/soups``, else ``~/.cache/pluralign/soups``."""
    if os.environ.get("PLURALIGN_CACHE"):
        return Path(os.environ["PLURALIGN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path(os.environ.get("HOME") or Path.home()) / ".cache")
    return Path(base).expanduser() / "pluralign" / "soups"


def _shown(url: str) -> str:
    """``url`` without user:password@, query or fragment (for messages)."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{u.scheme}://{host}{f':{u.port}' if u.port else ''}{u.path}"


def _check_scheme(url: str, allow_http: bool, what: str = "") -> None:
    """https always; plain http only to this machine (localhost, 127.0.0.1, ::1) or when allowed."""
    u = urllib.parse.urlsplit(url)
    scheme = u.scheme.lower()
    if scheme == "https":
        return
    if scheme == "http" and ((u.hostname or "").lower() in LOCAL_HOSTS or allow_http):
        return
    if scheme == "http":
        raise ValueError(f"{what}{_shown(url)}: plain http is refused (use https; http only to localhost, or pass "
                         "allow_http=True / set PLURALIGN_ALLOW_HTTP=1)")
    raise ValueError(f"{what}{_shown(url)}: only https (and local http) URLs can be downloaded, not {scheme or 'no'}:")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (to any host: mirrors and CDNs are common) but only to https / local http."""

    def __init__(self, allow_http: bool):
        super().__init__()
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        newurl = urllib.parse.urljoin(req.full_url, newurl)
        try:
            _check_scheme(newurl, self.allow_http, f"{_shown(req.full_url)} redirected (HTTP {code}) to ")
        except ValueError:
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pin(url: str, sha256: str | None) -> tuple[str, str | None]:
    """(the URL without its fragment, the sha256 pin from ``sha256`` or a ``#sha256=…`` fragment)."""
    base, _, frag = url.partition("#")
    from_url = frag[len("sha256="):] if frag.startswith("sha256=") else None
    pins = {p.lower() for p in (sha256, from_url) if p}
    for p in pins:
        if not re.fullmatch(r"[0-9a-f]{64}", p):
            raise ValueError(f"{_shown(base)}: {p!r} is not a sha256 (64 hex digits)")
    if len(pins) > 1:
        raise ValueError(f"{_shown(base)}: two different sha256 pins (argument and #sha256= in the URL)")
    return base, (pins.pop() if pins else None)


def _download(url: str, dest: Path, timeout: float, deadline: float, max_bytes: int, sha256: str | None,
              allow_http: bool) -> None:
    """Stream ``url`` into a temp file next to ``dest`` and rename it into place only when it is
    complete, within the caps and matches its pin; otherwise remove it and raise."""
    shown = _shown(url)
    opener = urllib.request.build_opener(_CheckedRedirects(allow_http))
    req = urllib.request.Request(url, headers={"User-Agent": "pluralign", "Accept-Encoding": "identity"})
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    start = time.monotonic()
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with opener.open(req, timeout=min(timeout, deadline)) as r:
                    length = (r.headers.get("Content-Length") or "").strip()
                    expected = int(length) if length.isdigit() else None
                    if expected is not None and expected > max_bytes:
                        raise DownloadError(f"could not download {shown}: its Content-Length is {expected} bytes, "
                                            f"more than the cap of {max_bytes} (PLURALIGN_MAX_DOWNLOAD_BYTES)")
                    got, h = 0, hashlib.sha256()
                    read = getattr(r, "read1", r.read)  # read1: returns what has arrived, so the deadline is checked
                    while True:
                        if time.monotonic() - start > deadline:
                            raise DownloadError(f"could not download {shown}: did not finish within {deadline:g} s "
                                                f"({got} bytes so far; PLURALIGN_DOWNLOAD_DEADLINE_S)")
                        chunk = read(1 << 16)
                        if not chunk:
                            break
                        got += len(chunk)
                        if got > max_bytes:
                            raise DownloadError(f"could not download {shown}: more than {max_bytes} bytes (the size "
                                                "cap; PLURALIGN_MAX_DOWNLOAD_BYTES)")
                        h.update(chunk)
                        f.write(chunk)
            except DownloadError:
                raise
            except urllib.error.HTTPError as e:
                raise DownloadError(f"could not download {shown}: HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                why = " ".join(str(getattr(e, "reason", None) or e).split())[:200] or type(e).__name__
                raise DownloadError(f"could not download {shown}: {why}") from None
        if expected is not None and got != expected:
            raise DownloadError(f"could not download {shown}: got {got} of the {expected} bytes its Content-Length "
                                "promised (the connection was cut short)")
        if sha256 is not None and h.hexdigest() != sha256:
            raise ValueError(f"{shown}: sha256 is {h.hexdigest()}, expected {sha256} (not cached)")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def extract_zip(path, folder, max_unzipped_bytes: int | None = None) -> Path:
    """Unpack the zip ``path`` into ``folder`` (created by renaming a finished temp folder, so it
    is complete or absent).  Refused, naming the archive: members that would land outside
    ``folder``; a declared total over ``max_unzipped_bytes`` (checked before anything is written);
    a member that unpacks to more than it declares, or a running total over the cap."""
    path, folder = Path(path), Path(folder)
    cap = max_unzipped_bytes or int(_env_number("PLURALIGN_MAX_UNZIPPED_BYTES", MAX_UNZIPPED_BYTES, int))
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path} is not a readable zip archive ({e})") from None
    with z:
        infos = z.infolist()
        declared = sum(i.file_size for i in infos)
        if declared > cap:
            raise ValueError(f"{path.name} would unpack to {declared} bytes, more than the cap of {cap} "
                             f"(PLURALIGN_MAX_UNZIPPED_BYTES; {path})")
        for i in infos:
            parts = PurePosixPath(i.filename.replace("\\", "/")).parts
            if not parts or i.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                raise ValueError(f"{path.name}: member {i.filename!r} would unpack outside its folder ({path})")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".part"))
        try:
            total = 0
            for i in infos:
                target = tmp.joinpath(*PurePosixPath(i.filename.replace("\\", "/")).parts)
                if i.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                n = 0
                with z.open(i) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(1 << 16), b""):
                        n += len(chunk)
                        total += len(chunk)
                        if n > i.file_size:
                            raise ValueError(f"{path.name}: member {i.filename!r} unpacks to more than the "
                                             f"{i.file_size} bytes it declares ({path})")
                        if total > cap:
                            raise ValueError(f"{path.name} unpacks to more than the cap of {cap} bytes ({path})")
                        dst.write(chunk)
            try:
                os.replace(tmp, folder)
            except OSError:
                if not folder.is_dir():  # else another process unpacked it first
                    raise
        except zipfile.BadZipFile as e:  # zipfile stops a member at its declared size; the CRC then fails
            raise ValueError(f"{path.name}: member {i.filename!r} is corrupt or larger than it declares "
                             f"({e}; {path})") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


def fetch(url: str, cache_dir=None, timeout: float = 60.0, *, deadline: float | None = None,
          max_bytes: int | None = None, sha256: str | None = None, allow_http: bool | None = None,
          max_unzipped_bytes: int | None = None) -> Path:
    """Download ``url`` into ``cache_dir`` (default :func:`default_cache_dir`) once — later calls
    reuse the copy — and return its path; a ``.zip`` is unpacked next to it (:func:`extract_zip`)
    and that folder is returned instead.

    Bounds: ``timeout`` per socket operation; ``deadline`` seconds for the whole download (default
    1800, env PLURALIGN_DOWNLOAD_DEADLINE_S); at most ``max_bytes`` (default 1 GiB, env
    PLURALIGN_MAX_DOWNLOAD_BYTES), refused up front when Content-Length says more; a body shorter
    than its Content-Length is refused.  ``sha256`` (or a ``#sha256=<hex>`` URL fragment) pins the
    content; a cached copy that does not match its pin is fetched again.  https only, except plain
    http to localhost / 127.0.0.1 / ::1 or with ``allow_http`` (env PLURALIGN_ALLOW_HTTP=1); redirects
    obey the same rule.  The file appears in the cache only once complete (temp file + rename)."""
    url, pin = _pin(url, sha256)
    if allow_http is None:
        allow_http = os.environ.get("PLURALIGN_ALLOW_HTTP", "") in ("1", "true", "yes")
    _check_scheme(url, allow_http)
    deadline = deadline or _env_number("PLURALIGN_DOWNLOAD_DEADLINE_S", DOWNLOAD_DEADLINE_S)
    max_bytes = max_bytes or int(_env_number("PLURALIGN_MAX_DOWNLOAD_BYTES", MAX_DOWNLOAD_BYTES, int))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    name = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", urllib.parse.unquote(name))[-100:]
    path = cache / f"{hashlib.sha1(url.encode()).hexdigest()[:12]}-{name}"
    fresh = False
    if path.exists() and pin is not None and _sha256_of(path) != pin:
        path.unlink()
    if not path.exists():
        _download(url, path, timeout, deadline, max_bytes, pin, allow_http)
        fresh = True
    if path.suffix == ".zip":
        folder = path.with_suffix("")
        if fresh and folder.exists():
            shutil.rmtree(folder)
        if not folder.exists():
            extract_zip(path, folder, max_unzipped_bytes)
        return folder
    return path


def resolve(source, cache_dir=None, sha256: str | None = None) -> Path:
    """A local path (must exist) or an https URL (fetched into ``cache_dir``, default
    :func:`default_cache_dir`; ``sha256`` pins it)."""
    if _is_url(str(source)):
        return fetch(str(source), cache_dir, sha256=sha256)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(source)!r} does not exist")
    return path


def read_records(path) -> list:
    """The records of a JSON file: a JSON list, or JSON lines (one value per non-empty line).
    UTF-8 (a byte-order mark is allowed).  ValueError, naming the file, when it is not UTF-8, is
    empty, holds no records (``[]``), is one JSON object spread over several lines (a dict, not a
    list) or is not valid JSON."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    if not text.strip():
        raise ValueError(f"{path}: is empty (no records)")
    if text.lstrip().startswith("["):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    elif text.lstrip().startswith("{") and len(text.strip().splitlines()) > 1 and _one_object(text) is not None:
        raise ValueError(f"{path}: is one JSON object (keys: {_keys(_one_object(text))}), not a JSON list of "
                         "records or JSON lines")
    else:
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
    if isinstance(out, list) and not out:
        raise ValueError(f"{path}: holds no records (an empty list)")
    return out


def _one_object(text: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _keys(d: dict) -> str:
    keys = [str(k) for k in list(d)[:5]]
    return ", ".join(keys) + (", …" if len(d) > 5 else "") if keys else "none"


def _record_list(path: Path, fields) -> list:
    """:func:`read_records`, refusing a file that is one JSON object without any of ``fields``
    (a dict of records, e.g. ``{"data": [...]}``) instead of reporting a missing field."""
    recs = read_records(path)
    if not isinstance(recs, list):
        raise ValueError(f"{path}: expected a JSON list of records or JSON lines, got a {type(recs).__name__}")
    if len(recs) == 1 and isinstance(recs[0], dict) and not any(f in recs[0] for f in fields):
        raise ValueError(f"{path}: is one JSON object (keys: {_keys(recs[0])}), not a JSON list of records or "
                         f"JSON lines with the fields {', '.join(fields)}")
    return recs


def _text_field(rec, field: str, where: str, allow_empty: bool = False) -> str:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: is a {type(rec).__name__}, not a JSON object")
    if field not in rec:
        raise ValueError(f"{where}: field {field!r} is missing")
    value = rec[field]
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} is not text ({type(value).__name__})")
    if not allow_empty and not value.strip():
        raise ValueError(f"{where}: field {field!r} is empty")
    return value


# -- soups pairs -------------------------------------------------------------------------------
def soups_files(root: str, dims=DIMENSIONS, pattern: str = "{dim}.json") -> dict[str, str]:
    """{dimension: path or URL} for files named by ``pattern`` under a folder or URL prefix; the
    pattern's only field is ``{dim}`` (a bad pattern raises one ValueError line naming it)."""
    dims = list(dims)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        for f in fields:
            if re.split(r"[.\[]", f, maxsplit=1)[0] != "dim":
                raise ValueError(f"soups_pattern {pattern!r}: unknown field {{{f}}} (the only field is {{dim}}, "
                                 "e.g. '{dim}.json')")
        names = {d: pattern.format(dim=d) for d in dims}
    except ValueError as e:
        if str(e).startswith("soups_pattern"):
            raise
        raise ValueError(f"soups_pattern {pattern!r} is not a valid pattern ({e}); write e.g. '{{dim}}.json'") from None
    except (KeyError, IndexError, AttributeError, TypeError) as e:
        raise ValueError(f"soups_pattern {pattern!r} is not a valid pattern ({e}); write e.g. '{{dim}}.json'") from None
    if len(dims) > 1 and len(set(names.values())) < len(dims):
        raise ValueError(f"soups_pattern {pattern!r} has no {{dim}}: every dimension would read the same file")
    return {d: f"{str(root).rstrip('/')}/{names[d]}" for d in dims}


def load_soups(files: dict[str, str], cache_dir=None, sha256: dict[str, str] | None = None) -> dict[str, list[dict]]:
    """{dimension: [{"user_input", "completion_a", "completion_b"}, …]} from {dimension: path or
    URL}; completion_a is the chosen response.  URLs are fetched into ``cache_dir`` (default
    :func:`default_cache_dir`), pinned by ``sha256`` ({dimension: hex}) where given.  A file
    without records, or a malformed record, raises ValueError naming the file (and the record
    index and field)."""
    out = {}
    for dim, source in files.items():
        path = resolve(source, cache_dir, (sha256 or {}).get(dim))
        recs = _record_list(path, SOUPS_FIELDS)
        out[dim] = [{f: _text_field(r, f, f"{path} record {i}") for f in SOUPS_FIELDS} for i, r in enumerate(recs)]
    return out


def split_by_question(records: dict[str, list[dict]], test_fraction: float, seed: int = 0):
    """(train, test) record dicts; a question falls wholly in one split (across all dimensions)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    questions = sorted({r["user_input"] for recs in records.values() for r in recs})
    random.Random(seed).shuffle(questions)
    test_q = set(questions[: max(1, round(test_fraction * len(questions)))])
    train = {d: [r for r in recs if r["user_input"] not in test_q] for d, recs in records.items()}
    test = {d: [r for r in recs if r["user_input"] in test_q] for d, recs in records.items()}
    return train, test


def to_pairs(records: dict[str, list[dict]], dims=("P1A", "P1B"), shares=(10 / 11, 1 / 11), n_users: int = 44,
             per_user: int | None = None, seed: int = 0) -> PreferencePairs:
    """Simulated users over the soups data: ``n_users`` split by ``shares`` (group g labels as
    dimension ``dims[g]`` does), each with ``per_user`` distinct pairs of its group's file
    (default: as many as the scarcest group allows, so the pair counts follow the shares).

    Users are assigned to groups in a seeded random order; rows are shuffled.  Returns
    :class:`PreferencePairs` (``.to_dataset()`` gives prompt/chosen/rejected/user_id/group)."""
    dims = list(dims)
    if len(dims) != len(shares):
        raise ValueError(f"{len(dims)} dimensions {dims} but {len(shares)} shares")
    for d in dims:
        if d not in records:
            raise ValueError(f"dimension {d!r} is not in the loaded data (have {sorted(records)})")
    g = torch.Generator().manual_seed(seed)
    sizes = group_sizes(n_users, list(shares))
    room = min(len(records[d]) // int(n) for d, n in zip(dims, sizes))
    per_user = room if per_user is None else per_user
    if per_user < 1 or per_user > room:
        raise ValueError(f"per_user={per_user} pairs does not fit: the data allow 1..{room} per user "
                         f"({dict(zip(dims, (len(records[d]) for d in dims)))} records for {sizes.tolist()} users)")
    group = torch.repeat_interleave(torch.arange(len(dims)), sizes)[torch.randperm(n_users, generator=g)]
    prompt, chosen, rejected, user = [], [], [], []
    for k, d in enumerate(dims):
        members = (group == k).nonzero().flatten().tolist()
        order = torch.randperm(len(records[d]), generator=g).tolist()
        for j, u in enumerate(members):
            for i in order[j * per_user:(j + 1) * per_user]:
                r = records[d][i]
                prompt.append(tulu_prompt(r["user_input"]))
                chosen.append(r["completion_a"])
                rejected.append(r["completion_b"])
                user.append(u)
    rows = torch.randperm(len(prompt), generator=g).tolist()
    pick = lambda xs: [xs[i] for i in rows]  # noqa: E731
    return PreferencePairs(pick(prompt), pick(chosen), pick(rejected), torch.tensor(user)[rows], n_users, group)


# -- prompts -----------------------------------------------------------------------------------
def load_questions(source, cache_dir=None, limit: int | None = None) -> list[str]:
    """Questions from a JSON list / JSON lines file: records with ``instruction`` (+ optional
    ``input``, joined by a space: alpaca_gpt4), with ``prompt`` (the Koala test set's
    ``{"id", "prompt"}`` lines), or plain strings."""
    path = resolve(source, cache_dir)
    recs = _record_list(path, ("instruction", "prompt"))
    out = []
    for i, r in enumerate(recs[:limit] if limit is not None else recs):
        where = f"{path} record {i}"
        if isinstance(r, str):
            if not r.strip():
                raise ValueError(f"{where}: the prompt is empty")
            q = r
        elif isinstance(r, dict) and "instruction" in r:
            q = _text_field(r, "instruction", where)
            extra = _text_field(r, "input", where, allow_empty=True) if "input" in r else ""
            q = f"{q} {extra}" if extra.strip() else q
        else:
            q = _text_field(r, "prompt", where)
        out.append(q.strip())
    return out


def alpaca_prompts(source, cache_dir=None, limit: int | None = None) -> list[str]:
    """PPO prompts: every question of an alpaca-style file in the Tulu template."""
    return [tulu_prompt(q) for q in load_questions(source, cache_dir, limit)]


def koala_prompts(source, preference: str | None = None, cache_dir=None) -> list[str]:
    """Evaluation prompts: the Koala questions in the Tulu template, with the preference
    instruction (e.g. ``PREFERENCES["P1B"]``) appended."""
    return [tulu_prompt(q, preference) for q in load_questions(source, cache_dir)]


# -- generated stand-in (test fixture) ----------------------------------------------------------
SIMPLE = ["sun", "dog", "cat", "tree", "ball", "milk", "big", "small", "red", "blue", "fun", "play", "run", "go",
          "see", "like", "water", "food", "home", "friend", "happy", "sad", "hot", "cold", "day", "night", "toy",
          "book", "bird", "fish", "rain", "grow", "make", "help", "good", "nice", "soft", "fast", "slow", "light"]
TECHNICAL = ["photosynthesis", "thermodynamics", "stochasticity", "heteroskedastic", "eigenvalue",
             "infrastructure", "polymerization", "electromagnetic", "mitochondrial", "differentiable",
             "asymptotically", "biochemical", "phenomenology", "epistemological", "quantization",
             "homeostasis", "combinatorial", "regularization", "macroeconomic", "neurotransmitter",
             "crystallography", "interferometry", "methodological", "catalytic", "algorithmic",
             "hydrodynamic", "oxidation", "hypothesis", "probabilistic", "semiconductor"]
GLUE = ["the", "a", "is", "and", "it", "of", "to", "in", "this", "that", "with"]
TONES = {
    "friendly": ["hey friend !", "you got this !", "haha , fun one !"],
    "unfriendly": ["ugh , whatever .", "do not bother me .", "figure it out yourself ."],
    "sassy": ["listen honey ,", "oh sweetie , please .", "sweetie , keep up ."],
    "sarcastic": ["oh wow , great question .", "sure , because that is so hard .", "wow , what a genius ."],
}
TOPICS = ["plants", "rain", "the moon", "computers", "money", "music", "the ocean", "volcanoes", "bread",
          "magnets", "sleep", "bridges", "birds", "electricity", "the brain", "stars", "soap", "maps"]
ASKS = ["explain {t} .", "how do {t} work ?", "tell me about {t} .", "why do people study {t} ?",
        "what is special about {t} ?", "describe {t} in a few words ."]


def _marker_count(words: list[str], phrases: list[str]) -> int:
    text = " " + " ".join(words) + " "
    return sum(text.count(" " + p + " ") for p in phrases)


def standin_traits(text: str) -> dict[str, float]:
    """What the stand-in's annotators look at: ``complexity`` (share of words of 9+ letters),
    ``length`` (words / 10), and counts of friendly, unfriendly, sassy and sarcastic phrases."""
    words = text.split()
    alpha = [w for w in words if w.isalpha()]
    t = {"complexity": sum(len(w) >= 9 for w in alpha) / max(1, len(alpha)), "length": len(words) / 10}
    t.update({tone: float(_marker_count(words, phrases)) for tone, phrases in TONES.items()})
    return t


def standin_score(dim: str, text: str) -> float:
    """How much a stand-in annotator of dimension ``dim`` likes ``text`` (higher is better)."""
    t = standin_traits(text)
    return {"P1A": -t["complexity"], "P1B": t["complexity"], "P2A": -t["length"], "P2B": t["length"],
            "P3A": t["friendly"] - t["unfriendly"], "P3B": t["unfriendly"] - t["friendly"],
            "P3C": t["sassy"], "P3D": t["sarcastic"]}[dim]


def _standin_response(rng: random.Random) -> str:
    tech = rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 0.9])  # drawn independently of length and tone
    n_sent = rng.randint(1, 5)
    tone = rng.choice(list(TONES)) if rng.random() < 0.8 else None
    sents = []
    for _ in range(n_sent):
        words = [rng.choice(GLUE)] + [rng.choice(TECHNICAL if rng.random() < tech else SIMPLE)
                                      for _ in range(rng.randint(3, 6))]
        sents.append(" ".join(words) + " .")
    if tone is not None:
        for _ in range(rng.randint(1, 2)):
            sents.insert(rng.randint(0, len(sents)), rng.choice(TONES[tone]))
    return " ".join(sents)


def standin_vocabulary() -> list[str]:
    """Every whitespace-separated token the stand-in files and prompts can contain (sorted)."""
    words = set(SIMPLE) | set(TECHNICAL) | set(GLUE) | {".", "?", "!", ",", "<|user|>", "<|assistant|>"}
    for phrase in [*sum(TONES.values(), []), *TOPICS, *ASKS, *PREFERENCES.values()]:
        words.update(phrase.replace("{t}", "").split())
    return sorted(words)


def make_standin(out_dir, seed: int = 0, n_per_dim: int = 200, n_prompts: int = 256, n_eval: int = 50,
                 noise: float = 0.1) -> dict:
    """Write a small generated stand-in in the real raw formats and return their paths:
    ``{"soups": {dim: P?.json}, "prompts": alpaca_prompts.json, "eval": koala_eval_50.jsonl}``.

    Responses draw word complexity, length and tone independently; each dimension's annotator
    prefers a with P = σ((s_d(a) − s_d(b)) / noise), s_d = :func:`standin_score`, so P1A and P1B
    (simple vs technical words) and P2A and P2B (short vs long) really disagree."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    question = lambda: rng.choice(ASKS).format(t=rng.choice(TOPICS))  # noqa: E731
    paths = {"soups": {}}
    for dim in DIMENSIONS:
        recs = []
        while len(recs) < n_per_dim:
            q, a, b = question(), _standin_response(rng), _standin_response(rng)
            if a == b:
                continue
            z = (standin_score(dim, a) - standin_score(dim, b)) / noise
            a_wins = rng.random() < 1 / (1 + math.exp(-max(-50.0, min(50.0, z))))
            recs.append({"user_input": q, "completion_a": a if a_wins else b, "completion_b": b if a_wins else a})
        paths["soups"][dim] = out / f"{dim}.json"
        paths["soups"][dim].write_text(json.dumps(recs, indent=1) + "\n")
    paths["prompts"] = out / "alpaca_prompts.json"
    paths["prompts"].write_text(json.dumps([{"instruction": question(), "input": "", "output": _standin_response(rng)}
                                            for _ in range(n_prompts)], indent=1) + "\n")
    paths["eval"] = out / "koala_eval_50.jsonl"
    paths["eval"].write_text("".join(json.dumps({"id": f"koala_{i}", "prompt": question()}) + "\n"
                                     for i in range(n_eval)))
    return paths
