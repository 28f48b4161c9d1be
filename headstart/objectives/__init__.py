"""Objectives: a sum of named, weighted terms over one forward pass.

Task terms (one per head: cross-entropy, binary cross-entropy, MSE), regularisers (L2-SP, BSS) and, in
later modes, multi-task weightings and domain-adaptation terms all have one shape: a term is given the step
(model, every head's outputs, the pooled features, the batch) and returns a scalar. The training loop knows
only `Objective`.
"""
from .compose import Objective, Step, TaskTerm, Term
from .tasks import OBJECTIVES, BinaryCrossEntropy, CrossEntropy, LossSettings, MeanSquaredError, \
    balanced_class_weights, balanced_pos_weights, task_loss
from .weighting import WEIGHTINGS, Weighting, get_weighting
from .domain import DOMAIN_TERMS, domain_term
from ..data.tasks import labelled


def task_objective(model, targets, settings: LossSettings = LossSettings()) -> Objective:
    """The objective of a single-task model: its head's task loss on `targets`, alone."""
    return Objective([TaskTerm(task_loss(model.task, targets, model.num_outputs, settings), model.MAIN)])


def multitask_objective(model, targets: dict, settings: LossSettings = LossSettings(), weighting: str = "equal",
                        weights: dict[str, float] | None = None, metrics: dict[str, list[str]] | None = None,
                        **options) -> Objective:
    """One masked task term per head of a multi-task model (its outputs' name = its task's), combined by a
    registered `weighting`; each task's loss is built on its labelled training targets."""
    heads = model.head_tasks()
    missing = [name for name in heads if name not in targets]
    if missing:
        raise ValueError(f"no targets for heads {missing}")
    terms = []
    for name, head in heads.items():
        y = targets[name]
        terms.append(TaskTerm(task_loss(head["task"], y[labelled(y)], head["num_outputs"], settings), name,
                              masked=True, metrics=tuple((metrics or {}).get(name, ()))))
    return Objective(terms, weighting=get_weighting(weighting, list(heads), weights, **options))


__all__ = ["DOMAIN_TERMS", "domain_term", "WEIGHTINGS", "Weighting", "get_weighting", "multitask_objective", "OBJECTIVES", "BinaryCrossEntropy", "CrossEntropy", "LossSettings", "MeanSquaredError", "Objective", "Step",
           "TaskTerm", "Term", "balanced_class_weights", "balanced_pos_weights", "task_loss", "task_objective"]
