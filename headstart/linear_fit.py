"""Linear models fitted, not trained: logistic regression (L-BFGS) and ridge regression (closed form) on
features, their L2 strength chosen on val, and k-fold out-of-fold outputs.

Two users: a linear probe's head on cached backbone features (run/head_fit.py), where one fit replaces
epochs of SGD, and `auto`'s raw-input contender on pooled pixels (plan/contender.py). Features are centred
and scaled by one common factor before fitting; the scaling folds back into an ordinary Linear layer.
"""
from __future__ import annotations

from typing import Callable

import torch

# L2 strengths tried, on standardised features (a mean loss + l2/2 |W|^2; ridge: + l2 |W|^2): the best were
# 0.01 to 1 for blurred clothing and 0.01 for the rotation angle of digits (pixels); 0.01 for EfficientNet
# features of Fashion-MNIST and OpenCV digits, 0.1 to 1 for MiniLM features of BBC News.
L2_GRID = (1.0, 0.1, 0.01, 0.001)
FOLDS = 5  # k of the out-of-fold outputs


def standardise(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each feature's mean, and one scale for all: pixels share their units, and dividing by each pixel's own
    std blew up the weights of border pixels that are almost always black (rotated digits: test MSE 0.041
    against 0.010 with one scale)."""
    mean = train.mean(0)
    return mean, (train - mean).pow(2).mean().sqrt().clamp_min(1e-12)


def with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, init: torch.Tensor | None = None,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Multinomial logistic regression on (N, D) standardised features: (D + 1, K) weights, bias last row.
    `loss(logits, y)` is the data term (default: mean cross-entropy; a run passes its own, with its class
    weights and label smoothing)."""
    loss = loss or torch.nn.functional.cross_entropy
    xb = with_bias(x)
    w = (init.clone() if init is not None else torch.zeros(xb.shape[1], k, dtype=x.dtype)).requires_grad_(True)
    # These tolerances stop 3x sooner than torch's defaults at the same val and test accuracy (within 0.2
    # points on blurred Fashion-MNIST pixels, 500 x 3072).
    opt = torch.optim.LBFGS([w], lr=1, max_iter=100, tolerance_grad=1e-4, tolerance_change=1e-6,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss(xb @ w, y) + 0.5 * l2 * w[:-1].pow(2).sum()
        value.backward()
        return value

    opt.step(closure)
    return w.detach()


def fit_ridge(x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Ridge regression of (N, T) targets on (N, D) standardised features (intercept unpenalised, by centring):
    (D + 1, T) weights, bias last row. Solved in the smaller of the primal and dual forms."""
    n, d = x.shape
    ymean = y.mean(0)
    xc, yc = x - x.mean(0), y - ymean
    if d <= n:
        w = torch.linalg.solve(xc.T @ xc + l2 * n * torch.eye(d, dtype=x.dtype), xc.T @ yc)
    else:
        w = xc.T @ torch.linalg.solve(xc @ xc.T + l2 * n * torch.eye(n, dtype=x.dtype), yc)
    return torch.cat([w, (ymean - x.mean(0) @ w)[None]], 0)


def fit_standardised(x: torch.Tensor, y: torch.Tensor, task: str, num_outputs: int, l2: float,
                     init: torch.Tensor | None = None, loss: Callable | None = None) -> torch.Tensor:
    """Ridge (regression) or logistic regression (classification, data term `loss`) on standardised features:
    (D + 1, K)."""
    if task == "regression":
        return fit_ridge(x, y.float().reshape(len(y), -1), l2)
    return fit_logistic(x, y.long(), num_outputs, l2, init=init, loss=loss)


def scaled(train_x: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(mean, std, [train_x, *others] standardised by the training features' mean and common scale)."""
    mean, std = standardise(train_x.double())
    # float32 fits: twice as fast as float64 here, and the same val accuracy on every L2 of the grid
    return mean, std, [((t.double() - mean) / std).float() for t in (train_x, *others)]


def l2_path(x: torch.Tensor, y: torch.Tensor, task: str, num_outputs: int, loss: Callable | None = None):
    """Yields (l2, weights) on standardised features for each L2 of the grid, strong to weak: each logistic
    fit starts from the last one."""
    w = None
    for l2 in sorted(L2_GRID, reverse=True):
        w = fit_standardised(x, y, task, num_outputs, l2, init=w, loss=loss)
        yield l2, w


def unscaled(w: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (K, D), bias (K,)) on raw features from (D + 1, K) weights on standardised ones:
    ((x - mean) / std) W + b = x (W / std) + (b - (mean / std) W)."""
    w = w.double()
    weight = w[:-1] / std
    bias = w[-1] - (mean / std) @ w[:-1]
    return weight.T.float().contiguous(), bias.float()


def fit_linear(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, task: str, num_outputs: int,
               val_score: Callable[[torch.Tensor], float]) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The linear model (weight (K, D), bias (K,)) on raw features whose L2 strength scores best on val
    (`val_score(outputs)`, higher is better; a tie keeps the stronger L2); returns (weight, bias, l2, its val
    score)."""
    mean, std, (x, xv) = scaled(train_x, val_x)
    best = None
    for l2, w in l2_path(x, train_y, task, num_outputs):
        score = val_score(with_bias(xv) @ w)
        if best is None or score > best[0]:
            best = (score, l2, w)
    score, l2, w = best
    return (*unscaled(w, mean, std), l2, score)


def fold_of(targets: torch.Tensor, task: str, folds: int = FOLDS) -> torch.Tensor:
    """Each sample's fold (0..folds-1), drawn by a fixed seed of its own (the run's random stream is left
    alone); for classification, each class spread evenly over the folds."""
    g = torch.Generator().manual_seed(0)
    fold = torch.empty(len(targets), dtype=torch.long)
    groups = [torch.arange(len(targets))] if task == "regression" else \
        [torch.nonzero(targets == c).flatten() for c in torch.unique(targets)]
    start = 0  # each class starts where the last ended, so small classes do not all land in fold 0
    for members in groups:
        order = members[torch.randperm(len(members), generator=g)]
        fold[order] = (torch.arange(len(order)) + start) % folds
        start += len(order)
    return fold


def out_of_fold(x: torch.Tensor, y: torch.Tensor, task: str, num_outputs: int, l2: float, weight: torch.Tensor,
                bias: torch.Tensor, folds: int = FOLDS) -> torch.Tensor:
    """Outputs for every training sample from the linear model at strength `l2` fitted on the other folds.
    Each logistic fit starts from the model fitted on all of them (`weight`, `bias`), which is the same
    function written in the fold's standardised coordinates (5 folds of 1,000 Fashion-MNIST images at 32 x 32:
    1.3 s, against 3.4 s from zero). A sample no fold can hold out (a training split of one) scores 0."""
    fold = fold_of(y, task, folds)
    outputs = torch.zeros(len(x), num_outputs)
    for k in range(folds):
        held = fold == k
        if not held.any() or held.all():
            continue
        mean, std = standardise(x[~held].double())
        init = torch.cat([weight.T.double() * std, (bias.double() + mean @ weight.T.double())[None]]).float()
        xs = ((x.double() - mean) / std).float()
        w = fit_standardised(xs[~held], y[~held], task, num_outputs, l2, init=init)
        outputs[held] = with_bias(xs[held]) @ w
    return outputs
