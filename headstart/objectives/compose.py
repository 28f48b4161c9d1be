"""One objective for every mode: ``loss = sum_i weight_i * term_i(step)``.

Each term is given what it needs explicitly, as a `Step`: the model (unwrapped), every head's outputs by
name, the pooled features of the labelled stream, and the batch (its targets, by head, and any further
stream such as unlabeled target-domain inputs). The forward pass runs once, through `model(x,
with_features=True)`, so a DDP wrapper sees it and its gradient hooks fire.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn

from ..data.tasks import labelled


@dataclass
class Step:
    """What a term sees of one training step."""

    model: nn.Module  # the TransferModel itself (not a DDP wrapper): for parameters and extra forwards
    outputs: dict[str, torch.Tensor]  # head name -> outputs
    features: torch.Tensor  # pooled backbone features of the labelled inputs (N, F)
    batch: Any  # data.Batch: inputs, targets, streams


class Term(Protocol):
    """A loss term: a name for its logged value and a scalar from a step."""

    name: str

    def __call__(self, step: Step) -> torch.Tensor: ...


class TaskTerm:
    """The supervised loss of one head against its targets (`loss` is a task loss from `tasks.py`).

    `masked`: the targets may have missing labels (multi-task data); the loss is the mean over the samples
    that carry one, and exactly zero (with no NaN, and a zero gradient) when none in the batch does.
    """

    def __init__(self, loss, head: str = "head", masked: bool = False, metrics: tuple[str, ...] = ()):
        self.loss_fn, self.head, self.masked = loss, head, masked
        self.metrics = tuple(metrics)  # reported beside the task kind's usual metrics (multi-task runs)
        self.name = f"task/{head}"

    def __call__(self, step: Step) -> torch.Tensor:
        outputs, targets = step.outputs[self.head], step.batch.target(self.head)
        if self.masked:
            keep = labelled(targets)
            if not bool(keep.all()):
                if not bool(keep.any()):
                    return outputs.float().sum() * 0.0
                outputs, targets = outputs[keep], targets[keep]
        return self.loss_fn.loss(outputs, targets)

    def __str__(self) -> str:
        return f"{self.name} {self.loss_fn}"


class Objective:
    """A weighted sum of named terms; the first term is the main head's task loss.

    Args:
        terms: the terms, main task term first.
        weights: one weight per term (default 1.0 each).
        main: the term `loss(outputs, targets)` scores at evaluation (default the first).

    Calling it on a batch returns ``{"loss": total, "outputs": main head outputs}``, plus each term's
    value under its name when there is more than one.

    A multi-task objective has a `weighting` (`weighting.py`) that combines its task terms (every `TaskTerm`);
    the other terms (regularisers) are added with their weights. The weighting may learn parameters
    (`parameters`, optimised with the heads), carry state across epochs (`state_dict`, `end_epoch`) and run
    its own backward (`backward`).
    """

    def __init__(self, terms: list, weights: list[float] | None = None, weighting=None):
        if not terms:
            raise ValueError("an objective needs at least one term")
        self.terms = list(terms)
        self.weights = [1.0] * len(self.terms) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.terms):
            raise ValueError(f"{len(self.weights)} weights for {len(self.terms)} terms")
        names = [t.name for t in self.terms]
        if len(set(names)) != len(names):
            raise ValueError(f"objective terms need distinct names, received {names}")
        self.main = self.terms[0]
        self.weighting = weighting

    def with_terms(self, terms: list, weights: list[float] | None = None) -> "Objective":
        """This objective with `terms` added (weight 1.0 each unless given)."""
        if not terms:
            return self
        return Objective(self.terms + list(terms), self.weights + ([1.0] * len(terms) if weights is None else weights),
                         self.weighting)

    @property
    def task_terms(self) -> list[TaskTerm]:
        return [t for t in self.terms if isinstance(t, TaskTerm)]

    def parameters(self) -> list[torch.Tensor]:
        """Parameters the objective itself learns (a weighting's, a domain discriminator's), optimised beside
        the model's."""
        own = self.weighting.parameters() if self.weighting is not None else []
        return own + [p for t in self.terms if hasattr(t, "parameters") for p in t.parameters()]

    def to(self, device) -> "Objective":
        """Put the objective's own parameters and buffers where the model is."""
        for p in self.weighting.parameters() if self.weighting is not None else []:
            p.data = p.data.to(device)
        for t in self.terms:
            if hasattr(t, "to"):
                t.to(device)
        return self

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Terms with a schedule over training (a reversal coefficient) read the progress here."""
        for t in self.terms:
            if hasattr(t, "begin_epoch"):
                t.begin_epoch(epoch, epochs)

    def state_dict(self) -> dict[str, Any]:
        state = {"weighting": self.weighting.state_dict()} if self.weighting is not None else {}
        terms = {t.name: t.state_dict() for t in self.terms if hasattr(t, "state_dict") and t.state_dict()}
        return state | ({"terms": terms} if terms else {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.weighting is not None and "weighting" in state:
            self.weighting.load_state_dict(state["weighting"])
        for t in self.terms:
            if t.name in state.get("terms", {}):
                t.load_state_dict(state["terms"][t.name])

    def task_weights(self) -> dict[str, float]:
        """The weighting's current weight of each task, as metrics-row entries (none without a weighting)."""
        if self.weighting is None:
            return {}
        return {f"train/weight/{k}": v for k, v in self.weighting.weights().items()}

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Let the weighting see the epoch's mean task losses (dwa sets the next epoch's weights from them)."""
        if self.weighting is not None:
            self.weighting.end_epoch({t.head: row[f"train/{t.name}"] for t in self.task_terms})

    def __str__(self) -> str:
        labels = [str(t) if isinstance(t, TaskTerm) else t.name for t in self.terms]
        text = " + ".join(label if w == 1.0 else f"{w:g} x {label}" for label, w in zip(labels, self.weights))
        return text + (f"; tasks combined by {self.weighting}" if self.weighting is not None else "")

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The main task's loss of collected outputs (evaluation: no features, no regularisers)."""
        return self.main.loss_fn.loss(outputs, targets)

    def __call__(self, model: nn.Module, core: nn.Module, batch) -> dict[str, Any]:
        """One step's loss. `model` is what runs forward (maybe a DDP wrapper), `core` the model itself."""
        outputs, features = model(batch.inputs, with_features=True)
        step = Step(core, outputs, features, batch)
        out: dict[str, Any] = {"outputs": outputs[self.main.head]}
        if self.weighting is not None:
            return self._weighted(step, out)
        total = None
        for term, weight in zip(self.terms, self.weights):
            value = term(step)
            weighted = value if weight == 1.0 else weight * value  # exact: a unit weight changes no bit
            total = weighted if total is None else total + weighted
            if len(self.terms) > 1:
                out[term.name] = value.detach()
        out["loss"] = total
        return out

    def _weighted(self, step: Step, out: dict[str, Any]) -> dict[str, Any]:
        tasks, rest = {}, None
        for term, weight in zip(self.terms, self.weights):
            value = term(step)
            out[term.name] = value.detach()
            if isinstance(term, TaskTerm):
                tasks[term.head] = value
            else:
                weighted = value if weight == 1.0 else weight * value
                rest = weighted if rest is None else rest + weighted
        combined = self.weighting.combine(tasks)
        out["loss"] = combined if rest is None else combined + rest
        out["_tasks"], out["_rest"] = tasks, rest  # for a gradient-based weighting's backward
        return out

    def backward(self, out: dict[str, Any], window: int, core: nn.Module, accelerator=None) -> None:
        """Accumulate the gradients of one batch's loss, divided by its accumulation window's size."""
        if self.weighting is None or not self.weighting.gradient_based:
            loss = out["loss"] / window
            accelerator.backward(loss) if accelerator else loss.backward()
            return
        heads = set(core.head_parameter_names())
        trainable = [(n, p) for n, p in core.named_parameters() if p.requires_grad]
        shared = [p for n, p in trainable if n not in heads]
        own = [p for n, p in trainable if n in heads] + self.parameters()
        self.weighting.backward(out["_tasks"], out["_rest"], shared, own, 1.0 / window)
