"""Several processes: the batch each rank takes, and launching N local processes through torchrun's launcher.

`train.batch_size` is the global batch: under N processes each rank takes batch_size / N samples a step and
DDP averages their gradients, so a run on N processes takes the same steps, at the same learning rates, as one
process would (`docs/distributed.md`).
"""
from __future__ import annotations

import math
import os

from ..errors import ConfigError


def rank_batch_size(batch_size: int, world: int) -> int:
    """Each rank's share of the global batch; the global batch must split evenly over the ranks."""
    if batch_size % world:
        lower, upper = (batch_size // world) * world, math.ceil(batch_size / world) * world
        raise ConfigError(f"train.batch_size {batch_size} is the global batch and does not split evenly over "
                          f"{world} processes; use a multiple of {world} (e.g. {lower or upper} or {upper})")
    return batch_size // world


def check_processes(n_train: int, rank_batch: int, world: int) -> None:
    """Refuse more processes than the training split has per-rank batches in an epoch: the extra ranks would
    have no samples of their own and train on repeats."""
    batches = math.ceil(n_train / rank_batch)
    if world > batches:
        raise ConfigError(f"{world} processes, but the {n_train} training samples make only {batches} batches of "
                          f"{rank_batch} (each rank's share of train.batch_size): some ranks would have no data of "
                          f"their own. Use at most {batches} processes, or more data.")


def check_same_start(start_epoch: int, device) -> None:
    """Every rank must resume from the same checkpoint: ranks that start at different epochs would call the
    collectives a different number of times and wait for each other forever. A collective call."""
    import torch
    import torch.distributed as dist

    world = dist.get_world_size()
    mine = torch.tensor([start_epoch], device=device)
    every = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    epochs = [int(t.item()) for t in every]
    if len(set(epochs)) > 1:
        raise ConfigError(f"the processes read different checkpoints of the run (epochs {epochs} by rank): the "
                          "run folder changed while they started, or is not the same folder on every machine. "
                          "Start them again once the folder is settled (on storage every machine sees).")


def launched() -> bool:
    """True inside a process started by torchrun or accelerate launch."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(nproc: int, argv: list[str]) -> None:
    """Run `python -m headstart <argv>` on `nproc` local processes through torch.distributed.run (the launcher
    behind `torchrun`): a rendezvous on this machine, gloo on CPU and nccl on GPUs (chosen by accelerate in each
    process). A process that fails ends all of them; its error is raised as ChildFailedError."""
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}", "--module", "headstart",
                                         *argv])
    env_threads = os.environ.get("OMP_NUM_THREADS")
    if env_threads is None:  # share the cores out instead of letting every rank use all of them
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    try:
        run(args)
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def without_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag VALUE` / `flag=VALUE` (the launcher's own option, not the workers')."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


__all__ = ["check_processes", "check_same_start", "launch", "launched", "rank_batch_size", "without_flag"]
