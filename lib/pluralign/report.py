"""Small helpers the notebooks share: metrics JSON, figures, CSV plots and wall time."""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

__all__ = ["write_metrics", "save_figure", "write_csv", "write_text_lines", "Stopwatch", "tidy"]


def tidy(x, digits: int = 6):
    """Round floats (recursively) to ``digits`` significant digits so metrics read well and
    compare exactly; tensors/arrays become lists."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    if isinstance(x, float):
        return x if (x == 0 or not math.isfinite(x)) else float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {str(k): tidy(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [tidy(v, digits) for v in x]
    return x


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_metrics(path, metrics: dict) -> None:
    """Write metrics as sorted, rounded JSON (atomically)."""
    _atomic_write_text(Path(path), json.dumps(tidy(metrics), indent=2, sort_keys=True) + "\n")


def write_csv(path, frame) -> None:
    """Write a pandas DataFrame as CSV (for ``dvc plots``), atomically.

    A text cell holding a bare "\r" (byte-level BPE can generate one) is left unquoted by the csv
    writer, whose line end is "\n", and any default CSV reader then splits the row there. Such a
    frame is written with every non-numeric field quoted; every other frame byte for byte as before.
    """
    text = frame.select_dtypes(exclude="number")
    has_cr = any(text[c].astype(str).str.contains("\r", regex=False).any() for c in text.columns)
    quoting = csv.QUOTE_NONNUMERIC if has_cr else csv.QUOTE_MINIMAL
    _atomic_write_text(Path(path), frame.to_csv(index=False, float_format="%.6g", quoting=quoting))


def save_figure(fig, path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG without volatile metadata (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    os.replace(tmp, path)


class Stopwatch:
    """``with Stopwatch("stage") as sw: ...`` prints the wall time when the block ends."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        print(f"[{self.name}] wall time: {self.seconds:.1f} s")
        return False


def write_text_lines(path, lines) -> None:
    """One string per line (newlines inside a string are replaced by spaces), atomically."""
    _atomic_write_text(Path(path), "".join(str(x).replace("\n", " ") + "\n" for x in lines))
