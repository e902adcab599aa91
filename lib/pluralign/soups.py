"""Data for the Tulu2-7B stage: the RLPHF "personalized soups" pairwise preferences (Jang et
al., 2023), alpaca-style PPO prompts and the Koala evaluation prompts — plus a generated stand-in
in the same raw formats for the offline `cpu` profile.

Soups files, one per preference dimension (P1A … P3D), hold records
``{"user_input": question, "completion_a": chosen, "completion_b": rejected}`` as a JSON list
or as JSON lines.  The reward model reads ``TEMPLATE.format(question=…) + response``.

Users are simulated the way the GPT-2 stage does it (:func:`pluralign.preferences.label_pairs`):
``n_users`` users split between the groups by ``shares`` (10:1 → [10/11, 1/11]), every user
labels ``per_user`` pairs, and a user of group g takes its pairs from the file of dimension
``dims[g]``.  Default pairing: P1A (elementary, majority) vs P1B (expert, minority) — the two
annotator instructions of one dimension, which disagree most; the paper's own pairing is not
recorded in shared/PAPERS.md, so it is a parameter (``dims``).

Nothing here touches the network at import time; :func:`fetch` downloads an http(s) URL with
urllib only when called, into a cache folder, and reuses the cached copy afterwards.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import torch

from .preferences import PreferencePairs
from .simulate import group_sizes

__all__ = ["DIMENSIONS", "PREFERENCES", "TEMPLATE", "tulu_prompt", "fetch", "resolve", "read_records",
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
def _is_url(source: str) -> bool:
    return str(source).startswith(("http://", "https://"))


def fetch(url: str, cache_dir, timeout: float = 60.0) -> Path:
    """Download ``url`` into ``cache_dir`` once (later calls reuse the copy) and return its path;
    a ``.zip`` is extracted next to it and the folder is returned instead."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "download"
    path = cache / f"{hashlib.sha1(url.encode()).hexdigest()[:12]}-{name}"
    if not path.exists():
        tmp = path.with_name(path.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except (urllib.error.URLError, TimeoutError) as e:
            tmp.unlink(missing_ok=True)
            raise OSError(f"could not download {url}: {getattr(e, 'reason', e)}") from None
        tmp.replace(path)
    if path.suffix == ".zip":
        folder = path.with_suffix("")
        if not folder.exists():
            with zipfile.ZipFile(path) as z:
                z.extractall(folder)
        return folder
    return path


def resolve(source, cache_dir=None) -> Path:
    """A local path (must exist) or an http(s) URL (fetched into ``cache_dir``)."""
    if _is_url(str(source)):
        if cache_dir is None:
            raise ValueError(f"{source} is a URL: give a cache_dir to download it into")
        return fetch(str(source), cache_dir)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"data file {str(source)!r} does not exist")
    return path


def read_records(path) -> list:
    """The records of a JSON file: a JSON list, or JSON lines (one value per non-empty line)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
    return out


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
    """{dimension: path or URL} for files named by ``pattern`` under a folder or URL prefix."""
    return {d: f"{str(root).rstrip('/')}/{pattern.format(dim=d)}" for d in dims}


def load_soups(files: dict[str, str], cache_dir=None) -> dict[str, list[dict]]:
    """{dimension: [{"user_input", "completion_a", "completion_b"}, …]} from {dimension: path or
    URL}; completion_a is the chosen response.  A malformed record raises ValueError naming the
    file, the record index and the field."""
    out = {}
    for dim, source in files.items():
        path = resolve(source, cache_dir)
        recs = read_records(path)
        if not isinstance(recs, list):
            raise ValueError(f"{path}: expected a JSON list of records or JSON lines, got a {type(recs).__name__}")
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
    recs = read_records(path)
    if not isinstance(recs, list):
        raise ValueError(f"{path}: expected a JSON list of records or JSON lines, got a {type(recs).__name__}")
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


# -- generated stand-in (cpu profile) ----------------------------------------------------------
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
