"""Independent jobs on a pool of single-threaded processes, results in submission order.

Why processes and not torch's threads: the cpu profile's models are tiny (≈1M parameters), so a
job spends much of its time in per-operation overhead that a second thread barely shortens, while
two processes each run a job at full speed (``benchmarks/bench_parallel_runs.py`` measures it).
Every job runs with ``threads`` torch threads (default one) wherever it runs, so its numbers do not
depend on the worker, on the number of workers, or on ``workers=1`` (which runs the jobs in this
process, in order).  Larger models that keep two cores busy (the GPT-2 stage's reward training, batch
64 × 128 tokens) run faster as ``workers=1, threads=2`` than as two one-thread jobs.
"""
from __future__ import annotations

import os

import torch

__all__ = ["map_processes"]


def _init_worker():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)


def _with_threads(threads: int, fn, *args):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def map_processes(fn, ctx, items: list, workers: int, desc: str = "jobs", threads: int = 1) -> list:
    """[fn(ctx, item) for item in items], ``workers`` at a time in spawned processes (``fn`` must
    be importable: a module-level function of ``pluralign``), each job on ``threads`` torch threads,
    with a progress bar over finished jobs.  A job's exception is raised here once every job has
    stopped."""
    from tqdm.auto import tqdm

    for name, v in (("workers", workers), ("threads", threads)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if workers == 1 or len(items) <= 1:
        return [_with_threads(threads, fn, ctx, item) for item in tqdm(items, desc=desc, mininterval=10)]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out = [None] * len(items)
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = {pool.submit(_with_threads, threads, fn, ctx, item): i for i, item in enumerate(items)}
        for f in tqdm(as_completed(futures), total=len(futures), desc=desc, mininterval=10):
            out[futures[f]] = f.result()
    return out
