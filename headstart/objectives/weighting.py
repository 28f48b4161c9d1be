"""How a multi-task objective combines its tasks' losses: registered weighting methods.

Kurin et al. (2022, "In Defense of the Unitary Scalarization") found that the plain sum of the task losses, tuned
like any other run, matches most specialised methods: `equal` is the baseline every other method must beat,
over seeds (bench/multitask.py).

A method combines the task losses of a step into one scalar (`combine`). Some learn or adapt weights:
`uncertainty` has one learned parameter per task (`parameters`, optimised with the heads), `dwa` sets the
weights of each epoch from the last two epochs' mean losses (`end_epoch`). `pcgrad` changes the gradient
itself (`backward`): per-task gradients of the shared parameters, conflicting components projected away.

Under DDP and gradient accumulation (why each is correct):
- equal, fixed: a fixed linear combination; the usual gradient averaging and accumulation apply unchanged.
- uncertainty: the log-variances are plain parameters outside the model, so the loop averages their gradients
  across ranks itself before each optimizer step; accumulation sums them like any gradient.
- dwa: weights change only between epochs, from epoch means of the task losses that the loop has already
  reduced across ranks, so every rank uses the same weights.
- pcgrad: projections act on each micro-batch's per-task gradients (one rank, one micro-batch: the method as
  published, at that batch size), and the projected gradients are summed over the accumulation window and
  averaged across ranks by the loop (DDP's own gradient hooks are bypassed for these steps).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError
from ..registry import Registry

WEIGHTINGS: Registry = Registry("task weighting")


class Weighting:
    """Base: a fixed weight per task (1.0 unless given)."""

    name = "fixed"
    gradient_based = False  # True: the method runs its own backward (see `backward`)

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None, **options: Any):
        if options:
            raise ConfigError(f"task weighting {self.name!r} takes no option(s) {sorted(options)}")
        self.tasks = list(tasks)
        self.fixed = {t: float((weights or {}).get(t, 1.0)) for t in self.tasks}

    def parameters(self) -> list[torch.Tensor]:
        return []

    def weights(self) -> dict[str, float]:
        """The current weight of each task (logged per epoch as train/weight/<task>)."""
        return dict(self.fixed)

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for t in self.tasks:
            w = self.fixed[t]
            term = losses[t] if w == 1.0 else w * losses[t]
            total = term if total is None else total + term
        return total

    def end_epoch(self, task_losses: dict[str, float]) -> None:
        """Called with each task's mean training loss of the epoch just finished."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __str__(self) -> str:
        if all(w == 1.0 for w in self.fixed.values()):
            return "equal weights"
        return "fixed weights " + ", ".join(f"{t} {w:g}" for t, w in self.fixed.items())


WEIGHTINGS.register("fixed", help="a fixed weight per task (tasks[].weight, default 1)")(Weighting)


@WEIGHTINGS.register("equal", help="the plain sum of the task losses: the baseline to beat (Kurin et al. 2022)")
class Equal(Weighting):
    name = "equal"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None, **options: Any):
        uneven = {t: w for t, w in (weights or {}).items() if w != 1.0}
        if uneven:
            raise ConfigError(f"weighting 'equal' gives every task weight 1, but tasks set {uneven}; use "
                              "weighting 'fixed' for your own weights")
        super().__init__(tasks, None, **options)


@WEIGHTINGS.register("uncertainty", help="learned homoscedastic-uncertainty weights (Kendall et al., CVPR 2018)")
class Uncertainty(Weighting):
    """L = sum_t 0.5 * (exp(-s_t) * L_t + s_t), with s_t = log sigma_t^2 learned per task (init 0).

    A noisier task (larger irreducible loss) learns a larger s_t, so a smaller weight 0.5 * exp(-s_t); the
    + s_t term keeps the weights from collapsing to zero.
    """

    name = "uncertainty"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None, **options: Any):
        super().__init__(tasks, weights, **options)
        self.log_vars = torch.zeros(len(self.tasks), requires_grad=True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.log_vars]

    def weights(self) -> dict[str, float]:
        return {t: 0.5 * math.exp(-float(s)) for t, s in zip(self.tasks, self.log_vars.detach())}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.log_vars.to(next(iter(losses.values())).device)
        return sum(0.5 * (torch.exp(-s[i]) * self.fixed[t] * losses[t] + s[i]) for i, t in enumerate(self.tasks))

    def state_dict(self) -> dict[str, Any]:
        return {"log_vars": self.log_vars.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])

    def __str__(self) -> str:
        return "uncertainty weighting (learned log-variance per task)"


@WEIGHTINGS.register("dwa", help="dynamic weight average from the tasks' loss ratios (Liu et al., CVPR 2019)")
class DynamicWeightAverage(Weighting):
    """w_t(e) = K * softmax_t(r_t / T), r_t = L_t(e-1) / L_t(e-2) (epoch-mean training losses); w = 1 for the
    first two epochs. A task whose loss falls slowly gets more weight."""

    name = "dwa"

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None, temperature: float = 2.0,
                 **options: Any):
        super().__init__(tasks, weights, **options)
        if not temperature > 0:
            raise ConfigError(f"dwa's temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.history: list[dict[str, float]] = []
        self.current = {t: 1.0 for t in self.tasks}

    def weights(self) -> dict[str, float]:
        return {t: self.current[t] * self.fixed[t] for t in self.tasks}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.weights()
        return sum(w[t] * losses[t] for t in self.tasks)

    def end_epoch(self, task_losses: dict[str, float]) -> None:
        self.history = (self.history + [dict(task_losses)])[-2:]
        if len(self.history) == 2:
            ratios = torch.tensor([self.history[1][t] / max(self.history[0][t], 1e-12) for t in self.tasks],
                                  dtype=torch.float64)
            w = len(self.tasks) * torch.softmax(ratios / self.temperature, 0)
            self.current = {t: float(v) for t, v in zip(self.tasks, w)}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "current": dict(self.current)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.current = [dict(h) for h in state["history"]], dict(state["current"])

    def __str__(self) -> str:
        return f"dynamic weight average (temperature {self.temperature:g})"


@WEIGHTINGS.register("pcgrad", help="gradient surgery: conflicting task gradients projected (Yu et al., NeurIPS 2020)")
class PCGrad(Weighting):
    """The sum of the task losses, with the gradient of the shared parameters replaced by
    sum_i g_i', where g_i' is g_i with, for each other task j (in a seeded random order), its component along
    g_j removed whenever g_i' . g_j < 0. Heads get their own task's gradient unchanged."""

    name = "pcgrad"
    gradient_based = True

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None, seed: int = 0, **options: Any):
        super().__init__(tasks, weights, **options)
        self.generator = torch.Generator().manual_seed(seed)

    def project(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """The projected sum of flat per-task gradients."""
        out = []
        for i, g in enumerate(grads):
            g = g.clone()
            for j in torch.randperm(len(grads), generator=self.generator).tolist():
                if j == i:
                    continue
                dot = torch.dot(g, grads[j])
                if dot < 0:
                    g -= dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
            out.append(g)
        return torch.stack(out).sum(0)

    def backward(self, losses: dict[str, torch.Tensor], rest: torch.Tensor | None, shared: list[torch.Tensor],
                 own: list[torch.Tensor], scale: float) -> None:
        """Accumulate into .grad: projected task gradients on `shared`, plain ones on `own` (the heads and
        anything else that trains), and the gradient of `rest` (regularisers) on both."""
        total = self.combine(losses) + (rest if rest is not None else 0.0)
        if own:
            torch.autograd.backward(total * scale, inputs=own, retain_graph=bool(shared))
        if not shared:
            return
        flat = []
        for i, t in enumerate(self.tasks):
            g = torch.autograd.grad(self.fixed[t] * losses[t] * scale, shared, retain_graph=True, allow_unused=True)
            flat.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                                   for x, p in zip(g, shared)]))
        projected = self.project(flat)
        extra = (torch.autograd.grad(rest * scale, shared, allow_unused=True) if rest is not None and
                 rest.requires_grad else [None] * len(shared))
        offset = 0
        for p, e in zip(shared, extra):
            n = p.numel()
            g = projected[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
            g = g if e is None else g + e
            p.grad = g if p.grad is None else p.grad + g

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def __str__(self) -> str:
        return "PCGrad (projected conflicting gradients)"


def get_weighting(name: str, tasks: list[str], weights: dict[str, float] | None = None, **options: Any) -> Weighting:
    return WEIGHTINGS.get(name)(tasks, weights, **options)
