"""FSDP (`train.fsdp`): parameters, gradients and optimizer state sharded across the processes.

For a backbone too large for one device: each rank keeps 1/N of every weight, gradient and AdamW moment, and
gathers a layer group's full weights only while that group computes. Built on PyTorch's own `fully_shard`
(FSDP2), which runs on gloo (CPU) and nccl (GPU) alike; accelerate's FSDP path is for GPU clusters only.

Shard units follow the backbone's layer groups (a group whose parameters fill one module is one unit), then
each head, then the whole model for whatever is left. Checkpoints and bundles hold the full weights (gathered
on every rank, written by rank 0), so they load anywhere, sharded or not.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError

def check_fsdp(strategy, model, settings, world: int, objective) -> None:
    """Refuse what FSDP cannot run here, with what to do instead."""
    problems = []
    if world < 2:
        problems.append("it shards across processes, and this run has one (start it with --nproc N or torchrun)")
    if any(strategy.changes_at(e) for e in range(1, settings.epochs)):
        problems.append(f"strategy {strategy.name} changes what trains during the run (use full or partial)")
    if model.adapters:
        problems.append("PEFT adapters are small already: train them with plain DDP (train.fsdp=false)")
    if getattr(strategy.options, "l2sp_alpha", 0) or getattr(strategy.options, "l2sp_beta", 0):
        problems.append("L2-SP compares every weight with its start, which a shard does not hold whole")
    if objective.weighting is not None and objective.weighting.gradient_based:
        problems.append("a weighting with its own backward (pcgrad) needs whole gradients")
    if settings.compile:
        problems.append("torch.compile of a sharded model is not supported here (train.compile=false)")
    if problems:
        raise ConfigError("train.fsdp cannot be used for this run: " + "; ".join(problems) + ".")


def _full_options():
    """Gather whole tensors onto rank 0's CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: nn.Module) -> list[str]:
    """Apply fully_shard in place: per layer group where it is one module, per head, then the root.
    Returns the names of the shard units."""
    from torch.distributed.fsdp import fully_shard

    units = []
    for group in model.spec.layer_groups:
        name = _group_module(model.backbone, group.params)
        if name:
            fully_shard(model.backbone.get_submodule(name))
            units.append(f"backbone.{name}")
    for name, head in model.heads.items():
        fully_shard(head)
        units.append(name)
    fully_shard(model)
    return units


def _group_module(backbone: nn.Module, params: tuple[str, ...]) -> str | None:
    """The module whose parameters are exactly `params` (a layer group), or None."""
    if not params:
        return None
    parts = [p.split(".") for p in params]
    prefix = []
    for level in zip(*[p[:-1] for p in parts]):
        if len(set(level)) > 1:
            break
        prefix.append(level[0])
    if not prefix:
        return None
    name = ".".join(prefix)
    owned = {f"{name}.{n}" for n, _ in backbone.get_submodule(name).named_parameters()}
    return name if owned == set(params) else None


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights, gathered (a collective: every rank calls it); rank 0 gets them on the CPU."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def full_optimizer_state(model: nn.Module, optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_full_state(model: nn.Module, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Load a checkpoint's full weights and optimizer state into the sharded model (every rank reads the file)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, \
        set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
