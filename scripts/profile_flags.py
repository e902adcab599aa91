#!/usr/bin/env python
"""Print a profile file's values as ``dvc exp run`` flags: ``-S section.key=value`` each.

    dvc exp run $(python scripts/profile_flags.py configs/gpt2_paper.yaml) evaluate compare

The file holds params.yaml sections with the values to replace; every key must exist in
params.yaml (a typo is an error, not a silently ignored flag) and the merged sections must pass
the stages' validation.  Lists and null are written in YAML flow style, as ``-S`` reads them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

from pluralign import checks  # noqa: E402


def merged(profile: dict, params: dict) -> dict:
    """params.yaml with the profile's values in; unknown sections or keys raise."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for section, values in profile.items():
        if section not in params or not isinstance(values, dict):
            raise SystemExit(f"error: profile section {section!r} is not a section of params.yaml")
        for key, value in values.items():
            if key not in params[section]:
                raise SystemExit(f"error: {section}.{key} is not a parameter (known: {', '.join(params[section])})")
            out[section][key] = value
    return out


def flags(profile: dict) -> list[str]:
    return [f"-S {section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for section, values in profile.items() for key, value in values.items()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = ap.parse_args(argv)
    profile = yaml.safe_load(Path(args.profile).read_text()) or {}
    params = merged(profile, yaml.safe_load(Path(args.params).read_text()))
    for section in profile:
        if section in checks.SCHEMAS:
            try:
                checks.validate(section, params[section])
            except checks.ParamError as e:
                raise SystemExit(f"error: {args.profile}: {e}") from None
    print(" ".join(flags(profile)))


if __name__ == "__main__":
    main()
