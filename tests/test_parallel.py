"""The process pool: results in submission order, the same numbers as in-process, errors raised."""
import pytest
import torch

from pluralign import parallel


def _job(ctx, item):
    g = torch.Generator().manual_seed(item)
    return {"item": item, "threads": torch.get_num_threads(), "x": float(torch.randn(3, generator=g, dtype=torch.float32).sum() * ctx["scale"])}


def _fails(ctx, item):
    if item == 2:  # one failing job: which of two failing jobs finishes first depends on the machine's load
        raise RuntimeError(f"job {item} failed")
    return {"item": item}


def test_pool_matches_in_process_and_keeps_the_order():
    pooled = parallel.map_processes(_job, {"scale": 2.0}, [3, 1, 2], workers=2)
    inline = parallel.map_processes(_job, {"scale": 2.0}, [3, 1, 2], workers=1)
    assert [r["item"] for r in pooled] == [3, 1, 2]
    assert pooled == inline and all(r["threads"] == 1 for r in pooled)


def test_a_failing_job_is_raised_and_bad_workers_named():
    with pytest.raises(RuntimeError, match="job 2 failed"):
        parallel.map_processes(_fails, {}, [2, 5], workers=2)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        parallel.map_processes(_job, {}, [1], workers=0)
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        parallel.map_processes(_job, {}, [1], workers=1, threads=0)


def test_each_job_gets_the_threads_asked_for_and_the_caller_keeps_its_own():
    before = torch.get_num_threads()
    inline = parallel.map_processes(_job, {"scale": 1.0}, [1, 2], workers=1, threads=2)
    pooled = parallel.map_processes(_job, {"scale": 1.0}, [1, 2], workers=2, threads=2)
    assert [r["threads"] for r in inline] == [2, 2] == [r["threads"] for r in pooled]
    assert torch.get_num_threads() == before
