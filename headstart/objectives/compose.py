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
    """The supervised loss of one head against its targets (`loss` is a task loss from `tasks.py`)."""

    def __init__(self, loss, head: str = "head"):
        self.loss_fn, self.head = loss, head
        self.name = f"task/{head}"

    def __call__(self, step: Step) -> torch.Tensor:
        return self.loss_fn.loss(step.outputs[self.head], step.batch.target(self.head))

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
    """

    def __init__(self, terms: list, weights: list[float] | None = None):
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

    def with_terms(self, terms: list, weights: list[float] | None = None) -> "Objective":
        """This objective with `terms` added (weight 1.0 each unless given)."""
        if not terms:
            return self
        return Objective(self.terms + list(terms), self.weights + ([1.0] * len(terms) if weights is None else weights))

    def __str__(self) -> str:
        labels = [str(t) if isinstance(t, TaskTerm) else t.name for t in self.terms]
        return " + ".join(label if w == 1.0 else f"{w:g} x {label}" for label, w in zip(labels, self.weights))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The main task's loss of collected outputs (evaluation: no features, no regularisers)."""
        return self.main.loss_fn.loss(outputs, targets)

    def __call__(self, model: nn.Module, core: nn.Module, batch) -> dict[str, Any]:
        """One step's loss. `model` is what runs forward (maybe a DDP wrapper), `core` the model itself."""
        outputs, features = model(batch.inputs, with_features=True)
        step = Step(core, outputs, features, batch)
        out: dict[str, Any] = {"outputs": outputs[self.main.head]}
        total = None
        for term, weight in zip(self.terms, self.weights):
            value = term(step)
            weighted = value if weight == 1.0 else weight * value  # exact: a unit weight changes no bit
            total = weighted if total is None else total + weighted
            if len(self.terms) > 1:
                out[term.name] = value.detach()
        out["loss"] = total
        return out
