"""The training loop's two halves: one epoch of optimisation, and evaluation over a split."""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn as nn

from ..data.batcher import Batcher
from ..data.tasks import labelled
from ..errors import TrainingError
from ..metrics import compute_metrics, default_metrics, delta_m, information_maximization, mean_entropy
from ..objectives import Objective
from ..runtime import autocast, predict_outputs, task_outputs
from .deadline import Deadline


def train_epoch(model: nn.Module, core: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer, scheduler,
                batcher: Batcher, *, epoch: int, batch_size: int, grad_accum: int = 1,
                clip_grad_norm: float | None = None, bf16: bool = False, channels_last: bool = False,
                seed: int = 0, accelerator=None, progress: Callable | None = None,
                bad_steps: BadSteps | None = None, deadline: Deadline | None = None,
                max_batches: int | None = None) -> dict[str, float]:
    """One pass over the batcher's data; returns the mean training loss (and each term's, when the objective
    has several).

    `model` runs the steps (maybe a DDP wrapper or a head on cached features); `core` is the TransferModel
    the objective's terms are given.

    Gradients of `grad_accum` consecutive batches are summed before a step, each loss divided by the size
    of its accumulation window, so k batches of b give the same step as one batch of k*b.
    Shuffling and augmentation draw from generators seeded by (seed, epoch): a resumed run replays them.
    A batch with a non-finite loss is left out, and an optimizer step with a non-finite gradient skipped;
    `bad_steps` counts them and stops the run past its allowance (0 by default: the first one stops it).
    Under several processes the returned means are over every rank's samples, and the gradients of what DDP
    does not see (an objective's own parameters; everything, for a weighting with its own backward) are
    averaged across ranks before each step.
    With a `deadline`, the epoch ends early when one more step would leave too little time for the passes
    that follow it (`Deadline.room_for_step`; the run's first step always runs, so it has a model to keep).
    Under several processes rank 0's clock decides for all, so every rank takes the same steps.
    `max_batches` ends the epoch after that many batches (the last epoch of a run capped by train.max_steps).
    """
    bad_steps = bad_steps or BadSteps(0)
    device = accelerator.device if accelerator else torch.device("cpu")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    # A weighting that runs its own backward (PCGrad) bypasses DDP's gradient hooks: the loop averages instead.
    manual = world > 1 and objective.weighting is not None and objective.weighting.gradient_based
    own_params = objective.parameters()
    augment_rng = torch.Generator().manual_seed(seed * 7919 + epoch)
    batches = batcher.order(batch_size, shuffle=True, seed=seed, epoch=epoch, rank=rank, world_size=world)
    batches = batches[:max_batches] if max_batches is not None else batches
    model.train()
    total, count = torch.zeros((), dtype=torch.float64), 0
    terms: dict[str, torch.Tensor] = {}
    step_s = 0.0
    for i, idx in enumerate(progress(batches) if progress else batches):
        if deadline is not None and deadline.step_s > 0 and not all_ranks_agree(
                deadline.room_for_step(step_s), device, world):
            deadline.stop(f"stopped in epoch {epoch + 1} after {i} of {len(batches)} steps to keep the time limit")
            break
        started = time.perf_counter()
        window_start = (i // grad_accum) * grad_accum
        window = min(grad_accum, len(batches) - window_start)
        batch = batcher.batch(idx, augment_rng).to(device, channels_last)
        with accelerator.no_sync(model) if manual else nullcontext():
            with autocast(device, bf16):
                out = objective(model, core, batch)
            if bad_steps.finite(out["loss"], "loss", epoch, i, optimizer):
                objective.backward(out, window, core, accelerator)
                total += out["loss"].detach().double() * len(idx)
                count += len(idx)
                for name in objective_terms(out):
                    terms[name] = terms.get(name, 0.0) + out[name].double() * len(idx)
        if i == window_start + window - 1:  # end of an accumulation window
            params = [p for g in optimizer.param_groups for p in g["params"]]
            if world > 1:
                average_gradients(params if manual else own_params, world)
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # sharded (FSDP) gradients
            if bad_steps.finite(norm, "gradient norm", epoch, i, optimizer):
                if clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()  # a skipped step keeps the schedule's length
        step_s = time.perf_counter() - started
        if deadline is not None and deadline.step_s == 0:
            deadline.step_s = step_s  # the run's first step: from now on the deadline is asked
    if world > 1:  # sums and counts of every rank: exact means, not a mean of ratios
        sums = torch.stack([total, torch.tensor(float(count), dtype=torch.float64),
                            *[torch.as_tensor(v, dtype=torch.float64) for v in terms.values()]]).to(device)
        torch.distributed.all_reduce(sums)
        total, count = sums[0].cpu(), int(sums[1].item())
        terms = dict(zip(terms, sums[2:].cpu()))
    return {"train/loss": (total / max(count, 1)).item(),
            **{f"train/{name}": (value / max(count, 1)).item() for name, value in terms.items()}}


def all_ranks_agree(flag: bool, device: torch.device, world: int) -> bool:
    """Rank 0's `flag` on every rank (a decision every rank must take the same way)."""
    if world == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.broadcast(value, src=0)
    return bool(value.item())


def average_gradients(params: list[torch.Tensor], world: int) -> None:
    """Replace each gradient by its mean over the ranks (for gradients DDP's hooks did not reduce)."""
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


class BadSteps:
    """Counts steps with a non-finite loss or gradient; past `allowed` of them the run stops with a message."""

    def __init__(self, allowed: int):
        self.allowed, self.seen = allowed, 0

    def finite(self, value: torch.Tensor, what: str, epoch: int, step: int, optimizer) -> bool:
        if bool(torch.isfinite(value)):
            return True
        self.seen += 1
        if self.seen > self.allowed:
            lrs = sorted({g["lr"] for g in optimizer.param_groups})
            raise TrainingError(
                f"training diverged: the {what} is {value.item()} at epoch {epoch + 1}, step {step + 1} "
                f"(learning rates {', '.join(f'{lr:.3g}' for lr in lrs)}). Likely causes: a learning rate too high, "
                "inputs with NaN or inf values, or an overflow in reduced precision. Lower train.lr, set "
                "train.clip_grad_norm, use train.precision=fp32, or allow a few bad steps with "
                "train.max_bad_steps. The run folder keeps its last good checkpoint and best bundle.")
        return False


def objective_terms(out: dict) -> list[str]:
    """The names of the per-term values an objective's step output carries (beside loss and outputs; keys
    starting with _ are for the objective's own backward)."""
    return [k for k in out if k not in ("loss", "outputs") and not k.startswith("_")]


def evaluate_split(model: nn.Module, batcher: Batcher, metric_names: list[str], prefix: str,
                   objective: Callable | None = None, positive: int | None = None, threshold: float | None = None,
                   tasks: dict | None = None, **kwargs) -> dict[str, float]:
    """Metrics (and the loss, when an objective is given) of the model on one split; `positive` is the class
    the f1 metric scores (at `threshold`, when the model has a decision threshold). With `tasks` (a
    multi-task run's {head: task} of `TransferModel.head_tasks`), every task is scored (`evaluate_tasks`)."""
    if tasks is not None:
        return evaluate_tasks(model, batcher, tasks, prefix, objective, **kwargs)
    return score_outputs(predict_outputs(model, batcher, **kwargs), batcher.data.targets, metric_names, prefix,
                         objective, positive, threshold)


def score_outputs(outputs: torch.Tensor, targets: torch.Tensor, metric_names: list[str], prefix: str,
                  objective: Callable | None = None, positive: int | None = None,
                  threshold: float | None = None) -> dict[str, float]:
    """`evaluate_split`'s metrics of a single-task split's outputs, already computed."""
    metrics = compute_metrics(outputs, targets, metric_names, prefix=f"{prefix}/", positive=positive,
                              threshold=threshold)
    if objective is not None:
        metrics[f"{prefix}/loss"] = objective.loss(outputs, targets).item()
    return metrics


def evaluate_tasks(model: nn.Module, batcher: Batcher, tasks: dict, prefix: str, objective=None,
                   references: dict[str, float] | None = None, **kwargs) -> dict[str, float]:
    """Each task's metrics on its labelled samples, as ``<prefix>/<task>/<metric>``; with an objective, each
    task's loss and their sum (``<prefix>/loss``); ``<prefix>/tasks_mean``: the mean of the tasks' headline
    metrics (accuracy, mAP) when no task is a regression; with single-task `references` of every task's
    headline metric (MSE for regression), ``<prefix>/delta_m``: the mean relative change against them (%)."""
    outputs = task_outputs(model, batcher, {n: t["num_outputs"] for n, t in tasks.items()}, **kwargs)
    terms = {t.head: t for t in objective.task_terms} if objective is not None else {}
    metrics: dict[str, float] = {}
    headlines, total = [], 0.0
    for name, task in tasks.items():
        y = batcher.data.targets[name]
        keep = labelled(y)
        out, y = outputs[name][keep], y[keep]
        if not len(y):
            continue
        if task["task"] == "regression":
            out = out.reshape(y.shape)
        names = default_metrics(task["task"], task["num_outputs"])
        names += [m for m in (terms[name].metrics if name in terms else ()) if m not in names]
        metrics.update(compute_metrics(out, y, names, prefix=f"{prefix}/{name}/"))
        headlines.append(metrics.get(f"{prefix}/{name}/{HEADLINE.get(task['task'], '')}"))
        if name in terms:
            metrics[f"{prefix}/{name}/loss"] = terms[name].loss_fn.loss(out, y).item()
            total += metrics[f"{prefix}/{name}/loss"]
    if terms:
        metrics[f"{prefix}/loss"] = total
    if headlines and all(h is not None for h in headlines):
        metrics[f"{prefix}/tasks_mean"] = sum(headlines) / len(headlines)
    if references:
        key = lambda name: f"{prefix}/{name}/{HEADLINE.get(tasks[name]['task'], 'mse')}"  # noqa: E731
        if all(key(name) in metrics for name in tasks):
            metrics[f"{prefix}/delta_m"] = delta_m({n: metrics[key(n)] for n in tasks}, dict(references),
                                                   {n for n in tasks if tasks[n]["task"] == "regression"})
    return metrics


HEADLINE = {"classification": "accuracy", "multilabel": "mAP"}  # what tasks_mean averages


def evaluate_target(model: nn.Module, batcher: Batcher, classes: list[str], **kwargs) -> dict[str, float]:
    """Scores on the unlabeled target data of domain adaptation: the label-free validators (``target/entropy``,
    lower is better; ``target/im``, higher is better) and, when the target data carries labels of the same
    classes, the oracle ``target/accuracy`` (for reporting: a real target set has no labels to choose with)."""
    outputs = predict_outputs(model, batcher, **kwargs)
    scores = {"target/entropy": mean_entropy(outputs), "target/im": information_maximization(outputs)}
    targets = batcher.data.targets
    if list(getattr(batcher.data, "classes", [])) == list(classes) and not targets.is_floating_point() \
            and targets.ndim == 1:
        scores["target/accuracy"] = compute_metrics(outputs, targets, ["accuracy"])["accuracy"]
    return scores
