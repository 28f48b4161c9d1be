"""Objectives: a sum of named, weighted terms over one forward pass.

Task terms (one per head: cross-entropy, binary cross-entropy, MSE), regularisers (L2-SP, BSS) and, in
later modes, multi-task weightings and domain-adaptation terms all have one shape: a term is given the step
(model, every head's outputs, the pooled features, the batch) and returns a scalar. The training loop knows
only `Objective`.
"""
from .compose import Objective, Step, TaskTerm, Term
from .tasks import OBJECTIVES, BinaryCrossEntropy, CrossEntropy, LossSettings, MeanSquaredError, \
    balanced_class_weights, balanced_pos_weights, task_loss


def task_objective(model, targets, settings: LossSettings = LossSettings()) -> Objective:
    """The objective of a single-task model: its head's task loss on `targets`, alone."""
    return Objective([TaskTerm(task_loss(model.task, targets, model.num_outputs, settings), model.MAIN)])


__all__ = ["OBJECTIVES", "BinaryCrossEntropy", "CrossEntropy", "LossSettings", "MeanSquaredError", "Objective", "Step",
           "TaskTerm", "Term", "balanced_class_weights", "balanced_pos_weights", "task_loss", "task_objective"]
