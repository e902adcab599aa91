"""Run a test function in several CPU processes joined by gloo, as ``accelerate launch`` would
start them (the environment accelerate reads: RANK, WORLD_SIZE, LOCAL_RANK, …), with a deadline.

Test scaffolding only: the processes come from ``torch.multiprocessing`` (spawn), the process group
is torch's; the code under test creates its own ``accelerate.Accelerator``, which finds the group."""
from __future__ import annotations

import os
import time

import torch
import torch.multiprocessing as mp


def _entry(rank, fn, world, init_file, default_dtype, args):
    import torch.distributed as dist

    torch.set_default_dtype(default_dtype)  # the test process's (conftest: float64), so models start alike
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run(fn, tmp_path, *args, nprocs: int = 2, timeout: float = 120.0) -> None:
    """fn(rank, world, *args) in ``nprocs`` processes; re-raises a worker's error; TimeoutError (the
    processes killed) if they have not all finished after ``timeout`` seconds — a hang fails."""
    init = tmp_path / f"rendezvous_{time.monotonic_ns()}"
    ctx = mp.start_processes(_entry, args=(fn, nprocs, str(init), torch.get_default_dtype(), args), nprocs=nprocs,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{fn.__name__}: {nprocs} processes still running after {timeout:.0f} s")


def cpu_fsdp_accelerator(**plugin_kwargs):
    """An Accelerator whose distributed type is FSDP (FSDP2) on CPU processes.

    Why we bypass accelerate here: accelerate 1.16 switches to FSDP only for GPU-family device
    types — on CPU, ``Accelerator(cpu=True, fsdp_plugin=…)`` reports ``MULTI_CPU`` and
    ``prepare`` returns ``DistributedDataParallel`` (measured with 2 gloo processes).  torch
    2.13's FSDP2 (``fully_shard``) does run on CPU with gloo, so the test sets accelerate's shared
    state to FSDP after construction; from there on it is accelerate's own FSDP2 code
    (``fully_shard`` per decoder layer, the optimizer re-mapped to the shards, ``clip_grad_norm_``,
    ``get_state_dict``, ``save_state`` / ``load_state``)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from pluralign.ppo import make_accelerator

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True,
                                            state_dict_type="SHARDED_STATE_DICT", **plugin_kwargs)
    accelerator = make_accelerator(cpu=True, fsdp_plugin=plugin)
    for state in (AcceleratorState, PartialState):
        state._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    assert accelerator.distributed_type == DistributedType.FSDP and accelerator.is_fsdp2
    return accelerator
