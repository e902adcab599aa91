"""Real public data shipped with the project (``data/raw/``): a manifest, a verifier and loaders.

The files are offline copies of public data that nobody on this project wrote; ``data/raw/README.md``
gives each one's origin, license and sha256.  Sources to cite:

- IMDb Large Movie Review Dataset v1.0 — Maas, Daly, Pham, Huang, Ng and Potts, "Learning Word
  Vectors for Sentiment Analysis", ACL 2011 (the data behind the hub's ``stanfordnlp/imdb``).
  ``imdb/aclImdb_train.jsonl.gz`` (train, 25,000) and ``imdb/aclImdb_test_20k.jsonl.gz`` (20,000 of
  the 25,000 test reviews).
- Alpaca (AlpacaDataCleaned) — Taori et al. 2023, "Stanford Alpaca: An Instruction-following LLaMA
  model"; data CC BY-NC 4.0.  ``instructions/alpaca_cleaned_51924.jsonl.gz``.
- Koala evaluation prompts — Geng et al. 2023, "Koala: A Dialogue Model for Academic Research"; the
  50-prompt set used by RLPHF and MaxMin-RLHF.  ``instructions/koala_eval_50.json``.
- AlpacaEval — Li, Zhang, Dubois et al. 2023 (tatsu-lab/alpaca_eval; code Apache-2.0, data CC BY-NC
  4.0, model outputs also bound by their providers' terms): the 805 instructions with 16
  generators' answers.  ``instructions/alpaca_eval_805_style_variants.jsonl.gz``.

Every function takes the data folder as ``root`` (default :func:`raw_dir`, ``<repo>/data/raw``) so
the pipeline can pass it from ``params.yaml``, and ``manifest`` (default :data:`MANIFEST`) so a
caller can describe other copies.  Each loader first verifies the file — it exists, its size and
streamed sha256 match the manifest — then parses it, checking that every record is a JSON object
with the required fields and that the record count matches.  Anything wrong raises
:class:`RawDataError` with one line naming the file and the problem.  A successful checksum is
cached per process, keyed on the resolved path, size and mtime, so repeated loads skip rehashing.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

__all__ = ["RawDataError", "Entry", "MANIFEST", "raw_dir", "path_of", "sha256_of", "verify",
           "parse_records", "read_records", "clean_review", "imdb", "alpaca", "koala", "alpaca_eval",
           "clear_cache"]

CHUNK = 1 << 20  # bytes read per step while hashing


class RawDataError(ValueError):
    """A raw data file is missing, altered, unreadable or malformed.  The message is one line:
    ``raw data file <name> (<path>): <problem>``."""

    def __init__(self, name: str, path: Path | str, problem: str):
        msg = f"raw data file {name} ({path}): {problem}"
        super().__init__(" ".join(msg.split()))  # one line, whatever the problem text held


@dataclass(frozen=True)
class Entry:
    """What a raw file must be: its sha256 (hex), size in bytes, number of records and the fields
    every record must have.  Files ending in ``.jsonl.gz`` hold one JSON object per line
    (gzip-compressed); files ending in ``.json`` hold one JSON array of objects."""
    sha256: str
    size: int
    records: int
    fields: tuple[str, ...]


IMDB_FIELDS = ("id", "split", "label", "rating", "text")

MANIFEST: dict[str, Entry] = {
    "imdb/aclImdb_train.jsonl.gz": Entry(
        "58e895508df412272d8625fbc276e822a935e4be6c9add63386b7cc879f86177", 13_044_122, 25_000, IMDB_FIELDS),
    "imdb/aclImdb_test_20k.jsonl.gz": Entry(
        "cbd54ba82d7c6f37d5a4a9931956e2030c9f367a77ac6eb58619a8b774e78857", 10_222_212, 20_000, IMDB_FIELDS),
    "instructions/alpaca_cleaned_51924.jsonl.gz": Entry(
        "db5538a094e640dc2b328e8939be69d5b301835963db5c5fd54ecd8b22b86aeb", 7_188_609, 51_924,
        ("idx", "instruction", "input", "output")),
    "instructions/koala_eval_50.json": Entry(
        "9863460aaaebd48ecabaa4f6564099df5941a5dd53b1caf8658b978924953476", 5_140, 50, ("id", "prompt")),
    "instructions/alpaca_eval_805_style_variants.jsonl.gz": Entry(
        "d25f15f2f6651ad02ef6b6a80b63052bace536f9f04bc80bc542c24e291230b4", 3_905_889, 805,
        ("idx", "dataset", "instruction", "outputs", "gpt4_pref_davinci003_vs_tulu2dpo7b")),
}

IMDB_FILES = {"train": "imdb/aclImdb_train.jsonl.gz", "test": "imdb/aclImdb_test_20k.jsonl.gz"}
ALPACA = "instructions/alpaca_cleaned_51924.jsonl.gz"
KOALA = "instructions/koala_eval_50.json"
ALPACA_EVAL = "instructions/alpaca_eval_805_style_variants.jsonl.gz"

_CHECKED: dict[tuple, str] = {}  # (resolved path, size, mtime_ns) -> sha256 that matched the manifest


def raw_dir() -> Path:
    """The default data folder: ``<repo>/data/raw`` (repo = two levels above this package).  With a
    non-editable install this points into site-packages; pass ``root=`` there."""
    return Path(__file__).resolve().parents[2] / "data" / "raw"


def clear_cache() -> None:
    """Forget which files were verified in this process (the next load rehashes them)."""
    _CHECKED.clear()


def _entry(name: str, manifest: Mapping[str, Entry] | None) -> Entry:
    manifest = MANIFEST if manifest is None else manifest
    if name not in manifest:
        raise RawDataError(name, "-", f"not in the manifest (known: {', '.join(sorted(manifest))})")
    return manifest[name]


def path_of(name: str, root: str | os.PathLike | None = None) -> Path:
    """``root / name`` with ``root`` defaulting to :func:`raw_dir`."""
    return Path(raw_dir() if root is None else root) / name


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (memory stays flat for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _damage(size: int, expected: int) -> str:
    if size < expected:
        return "truncated"
    return "altered" if size == expected else "altered (longer than expected)"


def verify(name: str, root: str | os.PathLike | None = None, *,
           manifest: Mapping[str, Entry] | None = None) -> Path:
    """Check that ``root/name`` exists and that its sha256 matches the manifest; return its path.

    Raises :class:`RawDataError` (one line) when the file is missing (naming where it looked) or
    its checksum differs (expected vs got prefix, actual vs expected size).  A pass is cached per
    process on (resolved path, size, mtime), so verifying the same file again costs one ``stat``.
    The records themselves are checked as they are read (:func:`read_records`).
    """
    entry = _entry(name, manifest)
    path = path_of(name, root)
    if not path.is_file():
        raise RawDataError(name, path, f"missing (looked for it in {path.parent}); "
                           "the project ships it in data/raw/ (see data/raw/README.md for its source)")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _CHECKED.get(key) == entry.sha256:
        return path
    got = sha256_of(path)
    if got != entry.sha256:
        raise RawDataError(name, path, f"sha256 mismatch, expected {entry.sha256[:12]}…, got {got[:12]}… "
                           f"({st.st_size:,} bytes, expected {entry.size:,}): the file is "
                           f"{_damage(st.st_size, entry.size)}")
    _CHECKED[key] = got
    return path


def _check_record(name: str, path: Path, where: str, record, fields: tuple[str, ...]) -> dict:
    if not isinstance(record, dict):
        raise RawDataError(name, path, f"{where}: not a JSON object but {type(record).__name__}")
    for field in fields:
        if field not in record:
            raise RawDataError(name, path, f"{where}: record lacks required field '{field}'")
    return record


def _jsonl_records(name: str, path: Path, fields: tuple[str, ...]) -> Iterator[dict]:
    lineno = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RawDataError(name, path, f"line {lineno}: not JSON ({e.msg} at column {e.pos + 1})") from None
                yield _check_record(name, path, f"line {lineno}", record, fields)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise RawDataError(name, path, f"unreadable gzip after line {lineno} ({type(e).__name__}: {e})") from None
    except UnicodeDecodeError as e:
        raise RawDataError(name, path, f"line {lineno + 1}: not UTF-8 ({e.reason})") from None


def _json_records(name: str, path: Path, fields: tuple[str, ...]) -> Iterator[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RawDataError(name, path, f"line {e.lineno}: not JSON ({e.msg} at column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise RawDataError(name, path, f"not UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(data, list):
        raise RawDataError(name, path, f"expected a JSON array of records, found {type(data).__name__}")
    for i, record in enumerate(data):
        yield _check_record(name, path, f"record {i}", record, fields)


def parse_records(name: str, path: str | os.PathLike, fields: tuple[str, ...]) -> Iterator[dict]:
    """Yield the records of one file without checking its checksum.

    ``.jsonl.gz``: one JSON object per line (blank lines skipped); errors name the line number.
    ``.json``: a JSON array of objects; errors name the record index (0-based).  Raises
    :class:`RawDataError` for an unreadable gzip stream, a line that is not JSON or not UTF-8, a
    record that is not an object, or one lacking a field of ``fields``.
    """
    path = Path(path)
    if name.endswith(".jsonl.gz"):
        return _jsonl_records(name, path, fields)
    if name.endswith(".json"):
        return _json_records(name, path, fields)
    raise RawDataError(name, path, "unknown format (expected .jsonl.gz or .json)")


def read_records(name: str, root: str | os.PathLike | None = None, *,
                 manifest: Mapping[str, Entry] | None = None) -> list[dict]:
    """Verify ``root/name`` (:func:`verify`), parse it (:func:`parse_records`) and check the number
    of records against the manifest.  Returns the records as parsed (list of dicts)."""
    entry = _entry(name, manifest)
    path = verify(name, root, manifest=manifest)
    records = list(parse_records(name, path, entry.fields))
    if len(records) != entry.records:
        raise RawDataError(name, path, f"{len(records):,} records, expected {entry.records:,}")
    return records


_BREAKS = re.compile(r"\s*(?:<br\s*/?>\s*)+", re.IGNORECASE)


def clean_review(text: str) -> str:
    """The IMDb normalisation: every run of HTML line breaks (``<br />``, also ``<br/>``/``<br>``,
    any case), together with the whitespace around it, becomes one space; then leading and
    trailing whitespace is stripped.  Nothing else changes (other tags such as ``<i>``, which
    appear in a handful of reviews, are kept)."""
    return _BREAKS.sub(" ", text).strip()


def imdb(split: str = "train", root: str | os.PathLike | None = None, *,
         manifest: Mapping[str, Entry] | None = None) -> list[dict]:
    """IMDb reviews (Maas et al. 2011) of one split.

    ``split``: ``"train"`` (25,000 reviews, 12,500 positive) or ``"test"`` (20,000 of the 25,000
    test reviews, 10,000 positive).  Returns a list of dicts ``{id: str ("train_pos_0"), split: str,
    label: int (1 positive, 0 negative), rating: int (1–4 negative, 7–10 positive), text: str}``
    with ``text`` normalised by :func:`clean_review` (no ``<br />`` left).
    """
    if split not in IMDB_FILES:
        raise ValueError(f"imdb split = {split!r}: must be one of {sorted(IMDB_FILES)}")
    records = read_records(IMDB_FILES[split], root, manifest=manifest)
    for r in records:
        r["text"] = clean_review(r["text"])
    return records


def alpaca(root: str | os.PathLike | None = None, *,
           manifest: Mapping[str, Entry] | None = None) -> list[dict]:
    """Alpaca instructions (AlpacaDataCleaned; Taori et al. 2023; CC BY-NC 4.0): 51,924 dicts
    ``{idx: int, instruction: str, input: str ("" for 31,989 of them), output: str}`` in ``idx``
    order (``idx`` runs 0–51,941 with 18 gaps)."""
    return read_records(ALPACA, root, manifest=manifest)


def koala(root: str | os.PathLike | None = None, *,
          manifest: Mapping[str, Entry] | None = None) -> list[dict]:
    """The 50 Koala evaluation prompts (Geng et al. 2023) used by RLPHF and MaxMin-RLHF:
    dicts ``{id: str ("0".."49"), prompt: str}``."""
    return read_records(KOALA, root, manifest=manifest)


def alpaca_eval(root: str | os.PathLike | None = None, *,
                manifest: Mapping[str, Entry] | None = None) -> list[dict]:
    """The 805 AlpacaEval instructions with 16 generators' answers: dicts ``{idx: int (0..804),
    dataset: str (helpful_base, koala, oasst, selfinstruct, vicuna), instruction: str, outputs:
    {generator: str}, gpt4_pref_davinci003_vs_tulu2dpo7b: int}``.  ``outputs`` has all 16
    generators for 802 rows (rows 366 and 484 lack ``alpaca-7b_verbose``, row 689 lacks both
    ``alpaca-7b`` style variants).  The last field is AlpacaEval's GPT-4 judgement: 1 =
    text_davinci_003 preferred, 2 = tulu-2-dpo-7b preferred."""
    return read_records(ALPACA_EVAL, root, manifest=manifest)
