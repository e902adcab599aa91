#!/usr/bin/env python
"""Print the comparisons' headline claims of a run, or of two runs side by side.

    python scripts/claims.py results/metrics                      # this run's claims
    python scripts/claims.py results/metrics --against OTHER_DIR  # and whether each keeps its verdict

Each claim is an interval the notebooks wrote (``pluralign.claims``): a paired difference (no
difference = 0) or a head-to-head win rate (no difference = ½), with its verdict.  Use it after a
`dvc repro` on another machine to see which conclusions your run shares with another one (the
Intel columns of the README's "Across CPUs" table were read this way; the recorded AMD run's
metrics files were not kept, so its column came from the README and the book).  A missing
directory or a malformed metrics file is one line, exit 2.
"""
from __future__ import annotations

import argparse
import sys

from pluralign import claims


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics_dir")
    ap.add_argument("--against", help="another run's metrics directory, shown beside the first")
    args = ap.parse_args(argv)
    try:
        if args.against:
            table = claims.compare_claims(args.metrics_dir, args.against)
            table = table.rename(columns={"a": args.metrics_dir, "b": args.against})
        else:
            table = claims.read_claims(args.metrics_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(claims.markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
