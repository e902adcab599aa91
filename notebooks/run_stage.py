#!/usr/bin/env python
"""Run one pipeline stage: validate its params.yaml section, execute its notebook with
papermill, and publish what it wrote only if every cell succeeded.

    python notebooks/run_stage.py STAGE notebooks/NN_name.ipynb [--params params.yaml] [--root .]

The notebook receives the section's keys (and those of ``--also`` sections) as papermill
parameters, plus ``results_dir`` and ``data_dir``, which point into a staging folder next to the
repository's results/, and ``inputs_dir`` (the published data/ that earlier stages wrote) when
it declares them.  A key the notebook does not declare is an error.  On success
each staged file (metrics, figures, plots, data, the executed notebook under
results/notebooks/) replaces its published copy; on any failure nothing is published and a
single line says why (exit code 2 for bad params, 1 for a failing cell).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def fail(msg: str, code: int) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage")
    ap.add_argument("notebook")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--also", action="append", default=[],
                    help="another params.yaml section whose keys the notebook also takes (e.g. a shared one)")
    ap.add_argument("--root", default=".", help="repository root (results/ and data/ live here)")
    args = ap.parse_args(argv)

    root = Path(args.root).resolve()
    lib = root / "lib"
    sys.path.insert(0, str(lib))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    import yaml
    from pluralign.checks import ParamError, validate

    params_path = root / args.params
    try:
        params = yaml.safe_load(params_path.read_text()) or {}
    except FileNotFoundError:
        fail(f"{args.params} not found under {root}", 2)
    except yaml.YAMLError as e:
        fail(f"{args.params} is not valid YAML: {str(e).splitlines()[0]}", 2)
    section = {}
    for name in [*args.also, args.stage]:
        if name not in params:
            fail(f"{args.params} has no section '{name}'", 2)
        try:
            values = validate(name, params[name])
        except ParamError as e:
            fail(f"{args.params}: {e}", 2)
        clash = sorted(set(values) & set(section))
        if clash:
            fail(f"{args.params}: sections {args.also + [args.stage]} both set {clash}", 2)
        section.update(values)
    notebook = root / args.notebook
    if not notebook.is_file():
        fail(f"notebook {args.notebook} not found", 2)

    import papermill as pm

    declared = set(pm.inspect_notebook(str(notebook)))
    unknown = sorted(set(section) - declared)
    if unknown:
        fail(f"{args.params}: {unknown} are not parameters of {args.notebook}", 2)

    stage_dir = Path(tempfile.mkdtemp(prefix=f".stage-{args.stage}-", dir=root))
    try:
        out_nb = stage_dir / "results" / "notebooks" / notebook.name
        out_nb.parent.mkdir(parents=True)
        # outputs go to the staging folder; inputs (earlier stages' outputs) are read where published
        paths = {"results_dir": str(stage_dir / "results"), "data_dir": str(stage_dir / "data"), "inputs_dir": str(root / "data")}
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(notebook), str(out_nb),
                parameters=dict(section, **{k: v for k, v in paths.items() if k in declared}),
                kernel_name="python3", cwd=str(notebook.parent), log_output=True, progress_bar=False,
            )
        except pm.PapermillExecutionError as e:
            first = next((line for line in e.source.splitlines() if line.strip()), "")[:80]
            fail(f"stage {args.stage}: {e.ename}: {e.evalue} (in {notebook.name}, cell starting {first!r})", 1)
        seconds = time.perf_counter() - t0
        # publish: every staged file replaces its counterpart under root (same filesystem → atomic)
        for src in sorted(p for p in stage_dir.rglob("*") if p.is_file()):
            dst = root / src.relative_to(stage_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        print(f"[{args.stage}] done in {seconds:.1f} s")
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
