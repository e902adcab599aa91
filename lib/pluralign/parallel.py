"""Independent jobs on a pool of single-threaded processes, results in submission order.

Why processes and not torch's threads: the cpu profile's models are tiny (≈1M parameters), so a
job spends much of its time in per-operation overhead that a second thread barely shortens, while
two processes each run a job at full speed (``benchmarks/bench_parallel_runs.py`` measures it).
Every job runs with one thread wherever it runs, so its numbers do not depend on the worker, on
the number of workers, or on ``workers=1`` (which runs the jobs in this process, in order).
"""
from __future__ import annotations

import os

import torch

__all__ = ["map_processes"]


def _init_worker():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)


def _one_thread(fn, *args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def map_processes(fn, ctx, items: list, workers: int, desc: str = "jobs") -> list:
    """[fn(ctx, item) for item in items], ``workers`` at a time in spawned processes (``fn`` must
    be importable: a module-level function of ``pluralign``), with a progress bar over finished
    jobs.  A job's exception is raised here once every job has stopped."""
    from tqdm.auto import tqdm

    if not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if workers == 1 or len(items) <= 1:
        return [_one_thread(fn, ctx, item) for item in tqdm(items, desc=desc, mininterval=10)]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out = [None] * len(items)
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = {pool.submit(_one_thread, fn, ctx, item): i for i, item in enumerate(items)}
        for f in tqdm(as_completed(futures), total=len(futures), desc=desc, mininterval=10):
            out[futures[f]] = f.result()
    return out
