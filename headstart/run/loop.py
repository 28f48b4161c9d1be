"""The training loop's two halves: one epoch of optimisation, and evaluation over a split."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..data import ImageData, iterate_batches
from ..metrics import compute_metrics
from .precision import autocast


def to_input(images: torch.Tensor, transform: Callable, generator: torch.Generator | None,
             device: torch.device, channels_last: bool) -> torch.Tensor:
    x = transform(images, generator).to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_epoch(model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer, scheduler,
                data: ImageData, transform: Callable, *, epoch: int, batch_size: int, grad_accum: int = 1,
                clip_grad_norm: float | None = None, bf16: bool = False, channels_last: bool = False,
                seed: int = 0, accelerator=None, progress: Callable | None = None) -> dict[str, float]:
    """One pass over `data`; returns the mean training loss.

    Gradients of `grad_accum` consecutive batches are summed before a step, each loss divided by the size
    of its accumulation window, so k batches of b give the same step as one batch of k*b.
    Shuffling and augmentation draw from generators seeded by (seed, epoch): a resumed run replays them.
    """
    device = accelerator.device if accelerator else torch.device("cpu")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    augment_rng = torch.Generator().manual_seed(seed * 7919 + epoch)
    batches = list(iterate_batches(len(data), batch_size, shuffle=True, seed=seed, epoch=epoch,
                                   rank=rank, world_size=world, drop_last=False))
    model.train()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i, idx in enumerate(progress(batches) if progress else batches):
        window_start = (i // grad_accum) * grad_accum
        window = min(grad_accum, len(batches) - window_start)
        x = to_input(data.images[idx], transform, augment_rng, device, channels_last)
        y = data.targets[idx].to(device)
        with autocast(device, bf16):
            out = objective(model, x, y)
        loss = out["loss"] / window
        accelerator.backward(loss) if accelerator else loss.backward()
        total += out["loss"].detach().double() * len(idx)
        count += len(idx)
        if i == window_start + window - 1:  # end of an accumulation window
            if clip_grad_norm is not None:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
    return {"train/loss": (total / max(count, 1)).item()}


@torch.no_grad()
def predict_outputs(model: nn.Module, data: ImageData, transform: Callable, *, batch_size: int = 128,
                    bf16: bool = False, channels_last: bool = False, device: torch.device | None = None
                    ) -> torch.Tensor:
    """Model outputs (N, num_outputs) in fp32 for every sample, in order."""
    device = device or torch.device("cpu")
    model.eval()
    outs = []
    for idx in iterate_batches(len(data), batch_size, shuffle=False, seed=0, epoch=0):
        x = to_input(data.images[idx], transform, None, device, channels_last)
        with autocast(device, bf16):
            outs.append(model(x).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0, 0)


def evaluate_split(model: nn.Module, data: ImageData, transform: Callable, metric_names: list[str],
                   prefix: str, objective: Callable | None = None, **kwargs) -> dict[str, float]:
    """Metrics (and the loss, when an objective is given) of the model on one split."""
    outputs = predict_outputs(model, data, transform, **kwargs)
    metrics = compute_metrics(outputs, data.targets, metric_names, prefix=f"{prefix}/")
    if objective is not None:
        loss = objective(lambda _: outputs, None, data.targets)["loss"]
        metrics[f"{prefix}/loss"] = loss.item()
    return metrics
