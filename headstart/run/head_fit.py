"""A linear probe's head, fitted in one go on the cached features instead of trained by epochs of SGD.

With the backbone frozen, a linear head on its features is a convex problem: logistic regression (or ridge
regression), which L-BFGS solves to the optimum in well under a second, where SGD epochs stop wherever their
count and learning rate leave them. The run's own loss is the data term (its class weights and label
smoothing included) plus an L2 penalty on the weights, whose strength is chosen on val by the rule the run
picks its best epoch with (selection.py). Measured (bench/results/linear_probe_fit.md): the fitted head
scored above the epoch-trained one on all ten of the auto suite's tasks, by 1.3 to 19.8 points (MiniLM
features of 250 BBC News articles: 0.938 against 0.892), at the same wall time.

The fit is one "epoch" of the run: its metrics row, best bundle, checkpoint and test pass are the loop's own.
It applies where the problem is that convex one; elsewhere the head trains by epochs, and the run says why.
`train.head_init: fit` uses the same fit to start any strategy's head (`initial_head`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data import FeatureData, make_batcher
from ..errors import ConfigError, DataError
from ..features import extract_features
from ..linear_fit import L2_GRID, l2_path, scaled, unscaled, with_bias
from ..objectives.tasks import CrossEntropy, MeanSquaredError
from .loop import score_outputs
from .selection import BestEpoch


# The fit works on the whole training feature matrix (in float64 while it is standardised): up to this many
# entries (about 200 MB) it does; past it, data sets are big enough for epochs of SGD to converge.
MAX_FIT_ENTRIES = 25_000_000


@dataclass(frozen=True)
class HeadSolver:
    """How a run's head learns: fitted (`fits`) or by epochs, and why (printed with the run's rates)."""

    fits: bool
    why: str


def linear_layer(head: nn.Module | None) -> nn.Linear | None:
    """The head's one Linear layer when the head is linear ((Dropout,) Linear), else None."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    if not layers or not isinstance(layers[-1], nn.Linear):
        return None
    return layers[-1] if all(isinstance(m, nn.Dropout) for m in layers[:-1]) else None


def why_not_fitted(strategy, model, data, objective, settings, processes: int) -> str | None:
    """Why the head cannot be fitted in this run (None: it can). `strategy` None: a fit of the initial head
    only (train.head_init), which the strategy's regularisers and the cache do not concern."""
    loss = getattr(objective.main, "loss_fn", None)
    entries = len(data.train) * model.spec.num_features
    checks = [
        (entries > MAX_FIT_ENTRIES, f"the training features ({len(data.train)} x {model.spec.num_features}) are "
                                    "more than one full-batch fit holds in memory comfortably; epochs of SGD do well "
                                    "on that much data"),
        (processes > 1, f"{processes} processes share the training split (the fit would see one rank's part)"),
        (settings.fsdp, "the model is sharded (FSDP)"),
        (strategy is not None and settings.cache == "off", "features are not cached (train.cache off)"),
        (data.unlabeled is not None, "domain adaptation trains on unlabeled target data too"),
        (bool(getattr(model, "extra_heads", None)), "a multi-task model has several heads"),
        (model.task not in ("classification", "regression"), f"the task is {model.task}, not single-label "
                                                               "classification or regression"),
        (linear_layer(model.head) is None, "the head is not linear (an mlp head)"),
        (len(objective.terms) > 1 or objective.weighting is not None,
         f"the objective adds terms to the task loss ({objective})"),
        (strategy is not None and strategy.regularised, "the strategy adds a regulariser (L2-SP or BSS)"),
        (not isinstance(loss, CrossEntropy if model.task == "classification" else MeanSquaredError),
         f"the loss is {loss}"),
    ]
    return next((why for failed, why in checks if failed), None)


def head_solver(strategy, model, data, objective, settings, processes: int) -> HeadSolver:
    """Fitted where the strategy asks for it (linear-probe: solver fit, or auto where the problem is convex);
    an explicit `fit` that cannot apply is a ConfigError naming why."""
    asked = getattr(strategy.options, "solver", "sgd")
    if asked == "sgd":
        return HeadSolver(False, "")
    why_not = why_not_fitted(strategy, model, data, objective, settings, processes)
    if why_not is None:
        kind = "logistic" if model.task == "classification" else "ridge"
        return HeadSolver(True, f"head fitted: {kind} regression on the cached features (the run's loss + L2, "
                                f"L2 chosen on val from {', '.join(f'{v:g}' for v in L2_GRID)}), one pass "
                                f"instead of {settings.epochs} epochs")
    if asked == "fit":
        raise ConfigError(f"strategy.solver fit needs a convex head problem that fits in memory, and here "
                          f"{why_not}. Use strategy.solver sgd (epochs), or remove what breaks it.")
    return HeadSolver(False, f"head trained by epochs: {why_not}")


@torch.no_grad()
def fit_head(core, train, val, objective, choose: BestEpoch, metric_names: list[str],
             positive: int | None = None) -> dict[str, float]:
    """Fit the linear head of `core` on the features of `train` and `val` (FeatureData: rows and targets),
    keeping the L2 that `choose` (a fresh BestEpoch of the run's monitor) ranks first; returns the metrics-row
    entries (the fitted model's mean training loss and its L2)."""
    layer = linear_layer(core.head)
    x, y = train.features, train.targets
    for name, part in (("training", train), ("val", val)):  # one NaN would turn every weight of the fit to NaN
        bad = torch.nonzero(~torch.isfinite(part.features).all(1)).flatten()
        if len(bad):
            raise DataError(f"the frozen backbone gave non-finite features for {len(bad)} of {len(part.features)} "
                            f"{name} samples (the first at positions {bad[:5].tolist()}), so no head can be fitted "
                            "on them. Check those inputs (corrupt files, extreme values) and the backbone's weights.")
    mean, std, (xs, xv) = scaled(x, val.features)
    kept = strongest = None
    with torch.enable_grad():  # L-BFGS differentiates the loss
        for i, (l2, w) in enumerate(l2_path(xs, y, core.task, core.num_outputs, loss=objective.loss)):
            strongest = strongest or (l2, w)
            row = score_outputs(with_bias(xv) @ w, val.targets, metric_names, "val", objective, positive)
            if choose.offer_row(row, i + 1):
                kept = (l2, w)
    l2, w = kept or strongest  # every L2 with a non-finite val score: the strongest
    weight, bias = unscaled(w, mean, std)
    layer.weight.copy_(weight.to(layer.weight))
    layer.bias.copy_(bias.to(layer.bias))
    train_loss = objective.loss(x.float() @ weight.T + bias, y).item()
    return {"train/loss": train_loss, "head_l2": l2}


def initial_head(core, data, objective, choose: BestEpoch, metric_names: list[str], positive: int | None,
                 **extract) -> str:
    """train.head_init fit: the head starts from the probe fitted on the pretrained backbone's features (eval
    mode, plain view; `extract`: extract_features' placement and precision), as LP-FT starts fine-tuning from
    a trained probe (Kumar et al., ICLR 2022) at the cost of one forward pass. Returns the line that says so."""
    parts = [FeatureData(extract_features(core.backbone, make_batcher(part, core.spec, train=False), **extract), part)
             for part in (data.train, data.val)]
    fitted = fit_head(core, *parts, objective, choose, metric_names, positive)
    score = f"{choose.monitor} {choose.value:.3f}" if choose.value is not None else "no finite val score"
    return (f"head initialised by a fit on the frozen backbone's features (L2 {fitted['head_l2']:g}, {score}), "
            "then trained")
