"""Transferability scores: how well a pretrained model suits a target task, measured without fine-tuning it.

Every score is a pure function of arrays (numpy or torch, any device and float dtype; computed in float64 numpy
on the CPU) and returns one float where higher means "expected to transfer better":

| score | reads | paper |
|---|---|---|
| `logme` | features (N, D), labels (N,) | You et al., ICML 2021 |
| `leep` | source_probs (N, Z), labels (N,) | Nguyen et al., ICML 2020 |
| `nce` | source_labels (N,), labels (N,) | Tran et al., ICCV 2019 |
| `h_score` | features (N, D), labels (N,) | Bao et al., ICIP 2019; shrinkage: Ibrahim et al., 2022 |
| `linear_probe` | features (N, D), labels (N,) | k-fold ridge-classifier accuracy (a cheap proxy) |

`SCORES` registers each with the inputs it reads, so a ranking workflow calls any of them the same way:
`score("logme", features=f, labels=y)`. Scores are comparable across backbones on the same samples and labels,
not across data sets. Labels may be any integer (or string) ids; they are mapped to 0..K-1 internally.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry

ArrayLike = np.ndarray | torch.Tensor | Sequence

# Rows of source_probs may drift this far from summing to 1 (fp16/bf16 softmax outputs do) before we refuse them.
PROB_SUM_ATOL = 1e-3


# ---------------------------------------------------------------------------------------------------------
# input checks


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16/float16 maths worth trusting: widen floats here, before anything is summed.
        return (x.double() if x.is_floating_point() else x).numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:  # ragged lists and the like
        raise DataError(f"{name} could not be read as an array ({type(x).__name__}: {e}); pass a numpy array or "
                        f"a torch tensor") from None


def _check_finite(a: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(a), -1).any(1))
        raise DataError(f"{name} contain {int(np.isnan(a).sum())} NaN and {int(np.isinf(a).sum())} infinite values "
                        f"in {len(rows)} of {len(a)} rows (first at row {rows[0]}). Drop or re-extract those samples; "
                        f"non-finite features usually come from a diverged model or float16 overflow.")


def _check_features(features: ArrayLike, n: int | None = None, name: str = "features") -> np.ndarray:
    f = _to_numpy(features, name)
    if f.ndim != 2:
        hint = ("for one value per sample use features[:, None]" if f.ndim == 1
                else "pool or flatten feature maps to one vector per sample first")
        raise DataError(f"{name} must be a 2-D array (N samples, D dims); got shape {tuple(f.shape)}: {hint}.")
    if f.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric; got dtype {f.dtype}.")
    if n is not None and len(f) != n:
        raise DataError(f"{name} has {len(f)} rows but labels has {n} entries; both must describe the same samples "
                        f"in the same order.")
    if f.shape[1] == 0 or len(f) == 0:
        raise DataError(f"{name} is empty (shape {tuple(f.shape)}); a score needs at least one sample and one dim.")
    f = f.astype(np.float64, copy=False)
    _check_finite(f, name)
    return f


def _check_ids(ids: ArrayLike, name: str) -> np.ndarray:
    a = _to_numpy(ids, name)
    if a.ndim == 2 and a.shape[1] == 1:
        raise DataError(f"{name} must be 1-D (N,); got shape {tuple(a.shape)}: use {name}.ravel().")
    if a.ndim == 2:
        raise DataError(f"{name} must be 1-D class ids (N,); got shape {tuple(a.shape)}. If these are one-hot rows "
                        f"or probabilities, pass {name}.argmax(1).")
    if a.ndim != 1:
        raise DataError(f"{name} must be 1-D class ids (N,); got shape {tuple(a.shape)}.")
    if a.dtype.kind not in "biuUS":
        raise DataError(f"{name} must be integer (or string) class ids; got dtype {a.dtype}. If the values are whole "
                        f"numbers stored as floats, pass {name}.astype(int); if they are regression targets, these "
                        f"classification scores do not apply.")
    return a


def _check_labels(labels: ArrayLike, n: int | None = None, against: str = "features") -> tuple[np.ndarray, int]:
    """Target labels as codes 0..K-1 plus K; refuses one class and fewer than two samples per class on average."""
    y = _check_ids(labels, "labels")
    if n is not None and len(y) != n:
        raise DataError(f"labels has {len(y)} entries but {against} has {n} rows; both must describe the same "
                        f"samples in the same order.")
    classes, codes = np.unique(y, return_inverse=True)
    k = len(classes)
    if k == 0:
        raise DataError("labels are empty; a score needs labelled samples.")
    if k < 2:
        raise DataError(f"labels contain only one class ({classes[0].item()!r}) in {len(y)} samples; a "
                        f"transferability score compares classes, so it needs at least 2. Check that the data are "
                        f"not taken from a single class (e.g. an unshuffled subset).")
    if len(y) < 2 * k:
        raise DataError(f"got {len(y)} samples for {k} classes; the scores estimate per-class statistics and need "
                        f"at least 2 samples per class on average (tens per class for a reliable ranking). Use more "
                        f"samples or fewer classes.")
    return codes.reshape(-1), k


def _check_probs(source_probs: ArrayLike, n: int) -> np.ndarray:
    p = _to_numpy(source_probs, "source_probs")
    if p.ndim != 2:
        raise DataError(f"source_probs must be a 2-D array (N samples, Z source classes) of probabilities; got shape "
                        f"{tuple(p.shape)}. For hard source predictions use nce(source_labels, labels).")
    if len(p) != n:
        raise DataError(f"source_probs has {len(p)} rows but labels has {n} entries; both must describe the same "
                        f"samples in the same order.")
    if p.dtype.kind not in "biuf":
        raise DataError(f"source_probs must be numeric; got dtype {p.dtype}.")
    p = p.astype(np.float64, copy=False)
    _check_finite(p, "source_probs")
    sums = p.sum(1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if p.min() < 0 or abs(sums[worst] - 1) > PROB_SUM_ATOL:
        raise DataError(f"source_probs rows must be probabilities (non-negative, summing to 1); row {worst} sums to "
                        f"{sums[worst]:.6g} and the smallest entry is {p.min():.6g}. If these are logits, pass "
                        f"logits.softmax(dim=1).")
    # Renormalise away the rounding the tolerance let through, so the empirical joint below sums to exactly 1.
    return p / sums[:, None]


def _one_hot(codes: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(codes), k))
    out[np.arange(len(codes)), codes] = 1.0
    return out


# ---------------------------------------------------------------------------------------------------------
# LogME


def logme(features: ArrayLike, labels: ArrayLike, *, tol: float = 1e-7, max_iter: int = 1000) -> float:
    r"""LogME: the maximised log evidence of a Bayesian linear model on the features, per sample and class.

    You, Zhang, Long, Wang, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021.

    For each class k the one-hot column y_k (N,) is regressed on the features F (N, D) with prior
    w ~ N(0, alpha^-1 I) and noise y | F, w ~ N(F w, beta^-1 I). Its log evidence is

        L_k(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2pi
                           - beta/2 ||F m - y_k||^2 - alpha/2 ||m||^2 - 1/2 log|A|,
        A = alpha I + beta F^T F,   m = beta A^-1 F^T y_k,

    maximised by MacKay's fixed point gamma = sum_i beta s_i / (alpha + beta s_i), alpha <- gamma / ||m||^2,
    beta <- (N - gamma) / ||F m - y_k||^2, where s_i are the eigenvalues of F^T F. The score is
    LogME = 1/(N K) sum_k L_k(alpha_k*, beta_k*). Features are used as given (no centring), as in the paper.

    One eigendecomposition of the smaller Gram matrix (F^T F when D <= N, F F^T when N < D) gives all the terms
    in closed form, so each fixed-point step costs O(min(N, D) K) and all K classes iterate together.

    Args:
        features: (N, D) features of the target samples.
        labels: (N,) integer class ids, at least 2 classes.
        tol: stop when alpha and beta of every class change by less than this relative amount.
        max_iter: upper bound on fixed-point steps (20-50 suffice on real features; each costs O(min(N, D) K)).

    Returns:
        The LogME value, a log-likelihood per sample: higher is better; typically between about -2 and 2.

    Raises:
        DataError: bad shapes, non-finite features, one class, or fewer than 2 samples per class on average.

    Example:
        >>> logme(torch.randn(100, 16), torch.arange(100) % 4)  # doctest: +SKIP
    """
    f = _check_features(features)
    codes, k = _check_labels(labels, len(f))
    n, d = f.shape
    y = _one_hot(codes, k)  # (N, K)
    y_sq = y.sum(0)  # ||y_k||^2 = n_k for one-hot columns

    # Eigendecompose the smaller Gram matrix: it has the same non-zero spectrum s_i = sigma_i^2 as the other one,
    # and a Gram product plus an eigh of min(N, D)^2 is several times cheaper than an SVD of F. In float64 the
    # squared condition number costs nothing that matters: directions below ~1e-8 sigma_max barely move the
    # evidence. z = U^T y_k are the targets in the left singular basis.
    if d <= n:
        s, v = np.linalg.eigh(f.T @ f)  # (D,), (D, D)
        fty = v.T @ (f.T @ y)  # (D, K) = S U^T Y
    else:
        s, u = np.linalg.eigh(f @ f.T)  # (N,), (N, N)
        fty = None
    # Eigenvalues below this are round-off of the Gram product (its error is ~ eps * s_max per entry), not signal;
    # keeping them would divide noise by ~0 when recovering z below.
    keep = s > s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    s = s[keep]
    if fty is not None:
        z = fty[keep] / np.sqrt(s)[:, None]  # (r, K)
    else:
        z = u[:, keep].T @ y  # (r, K)
    z2 = z**2
    # Part of y_k outside the column span of F: it is left in the residual whatever alpha and beta are. Clipped
    # because it is a difference of nearly equal numbers when F spans y_k.
    perp = np.maximum(y_sq - z2.sum(0), 0.0)

    # A class whose targets are orthogonal to every feature direction (F^T y_k = 0, e.g. all-zero features) has its
    # evidence maximised at alpha -> inf, beta = N / ||y_k||^2; the iteration below would divide 0 by 0 there.
    empty = z2.sum(0) <= y_sq * 1e-12
    alpha, beta = np.ones(k), np.ones(k)
    if not empty.all():
        live = ~empty
        alpha[live], beta[live] = _logme_fixed_point(s, z2[:, live], perp[live], n, tol, max_iter)
    evidence = _logme_evidence(alpha, beta, s, z2, perp, n)
    closed = n / 2 * (np.log(n / y_sq) - 1 - math.log(2 * math.pi))
    evidence = np.where(empty, closed, evidence)
    return float(evidence.mean() / n)


_LOGME_CAP = 1e12  # bound on beta s_i / alpha and its inverse, see _logme_fixed_point


def _logme_fixed_point(s: np.ndarray, z2: np.ndarray, perp: np.ndarray, n: int, tol: float,
                       max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """MacKay's updates for all classes at once; s (r,), z2 (r, K), perp (K,). Returns alpha, beta (K,)."""
    k = z2.shape[1]
    alpha, beta = np.ones(k), np.ones(k)
    tiny = np.finfo(np.float64).tiny
    s_max, s_min = s.max(), s.min()
    for _ in range(max_iter):
        t = beta * s[:, None]  # (r, K): beta s_i
        den = alpha + t
        gamma = (t / den).sum(0)  # effective number of well-determined parameters
        m_sq = (beta * t * z2 / den**2).sum(0)  # ||m||^2 = sum beta^2 s_i z_i^2 / (alpha + beta s_i)^2
        res = ((alpha / den) ** 2 * z2).sum(0) + perp  # ||F m - y||^2
        new_alpha = gamma / np.maximum(m_sq, tiny)
        new_beta = np.maximum(n - gamma, 0.0) / np.maximum(res, tiny)
        # The evidence can peak at the edge: alpha -> inf when the features say nothing about a class (w -> 0),
        # beta -> inf when N <= D and the features interpolate y_k exactly. The updates then grow geometrically
        # until they overflow. Once the prior (or the data) dominates every direction by _LOGME_CAP, the evidence
        # is within ~1/_LOGME_CAP of its limit, so stop there; the caps never bind at an interior optimum.
        new_alpha = np.clip(new_alpha, tiny, beta * s_max * _LOGME_CAP)
        new_beta = np.clip(new_beta, tiny, new_alpha * _LOGME_CAP / s_min)
        done = (np.abs(new_alpha - alpha) <= tol * alpha).all() and (np.abs(new_beta - beta) <= tol * beta).all()
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return alpha, beta


def _logme_evidence(alpha: np.ndarray, beta: np.ndarray, s: np.ndarray, z2: np.ndarray, perp: np.ndarray,
                    n: int) -> np.ndarray:
    """L_k(alpha, beta) for each class, in the spectral form.

    D/2 log alpha - 1/2 log|A| = -1/2 sum_i log(1 + beta s_i / alpha): written with log1p so that neither a
    huge alpha nor the D - r zero eigenvalues cost precision.
    """
    t = beta * s[:, None]
    den = alpha + t
    m_sq = (beta * t * z2 / den**2).sum(0)
    res = ((alpha / den) ** 2 * z2).sum(0) + perp
    return (n / 2 * np.log(beta) - n / 2 * math.log(2 * math.pi) - beta / 2 * res - alpha / 2 * m_sq
            - 0.5 * np.log1p(t / alpha).sum(0))


# ---------------------------------------------------------------------------------------------------------
# LEEP and NCE


def leep(source_probs: ArrayLike, labels: ArrayLike) -> float:
    r"""LEEP: the log expected empirical prediction of the source model's class probabilities.

    Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations", ICML 2020.

    With theta_i (Z,) the source model's probabilities over its own Z classes for target sample i:

        P(y, z) = 1/N sum_{i: y_i = y} theta_i[z]          empirical joint (K, Z)
        P(y | z) = P(y, z) / sum_y' P(y', z)
        LEEP = 1/N sum_i log( sum_z P(y_i | z) theta_i[z] )

    i.e. the average log-likelihood of the "expected empirical predictor" that maps source predictions to target
    labels. LEEP <= 0; 0 when the source predictions determine the target label. With one-hot theta it equals
    NCE of the source arg-max labels.

    Args:
        source_probs: (N, Z) rows of source-model probabilities (softmax outputs, not logits) on target samples.
        labels: (N,) target class ids, at least 2 classes.

    Returns:
        LEEP, in (-inf, 0]; higher is better.

    Raises:
        DataError: rows that are not probabilities, bad shapes, one class, too few samples.
    """
    y = _check_ids(labels, "labels")
    p = _check_probs(source_probs, len(y))
    codes, k = _check_labels(y, len(p), against="source_probs")
    n = len(p)
    joint = _one_hot(codes, k).T @ p / n  # (K, Z)
    marginal = joint.sum(0)  # (Z,)
    # A source class no sample puts mass on has P(z) = 0; its column only ever multiplies theta_i[z] = 0, so any
    # finite value does: use 0 rather than 0/0.
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = (p * cond[codes]).sum(1)  # (N,) sum_z P(y_i | z) theta_i[z]; > 0 since theta_i[z] > 0 => P(y_i|z) > 0
    return float(np.log(eep).mean())


def nce(source_labels: ArrayLike, labels: ArrayLike) -> float:
    r"""NCE: the negative conditional entropy of the target labels given the source labels.

    Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.

    From the empirical joint P(z, y) = #{i: z_i = z, y_i = y} / N of source labels z (for instance the source
    model's arg-max predictions) and target labels y:

        NCE = -H(Y | Z) = sum_{z, y} P(z, y) log( P(z, y) / P(z) )

    NCE <= 0; 0 when the source label determines the target label; -H(Y) when they are independent.
    Unchanged by renaming the source or the target classes.

    Args:
        source_labels: (N,) source class ids (any number of distinct values, one is allowed).
        labels: (N,) target class ids, at least 2 classes.

    Returns:
        NCE in nats, in [-log K, 0]; higher is better.

    Raises:
        DataError: bad shapes, mismatched lengths, one target class, too few samples.
    """
    z = _check_ids(source_labels, "source_labels")
    codes, k = _check_labels(labels, len(z), against="source_labels")
    _, zc = np.unique(z, return_inverse=True)
    zc = zc.reshape(-1)
    n = len(z)
    counts = np.zeros((zc.max() + 1, k))
    np.add.at(counts, (zc, codes), 1.0)  # (Z, K) co-occurrence counts
    z_counts = counts.sum(1, keepdims=True)
    nz = counts > 0  # 0 log 0 = 0
    ratio = np.divide(counts, z_counts, out=np.ones_like(counts), where=nz)
    return float((counts[nz] * np.log(ratio[nz])).sum() / n)


# ---------------------------------------------------------------------------------------------------------
# H-score


def h_score(features: ArrayLike, labels: ArrayLike, shrinkage: bool | float = True) -> float:
    r"""H-score: how much of the feature covariance is explained by the class means.

    Bao, Li, Huang, Zheng, Wang, Tong, Shen, "An Information-theoretic Approach to Transferability in Task
    Transfer Learning", ICIP 2019; shrinkage estimator from Ibrahim, Ponomareva, Mazumder, "Newer is not always
    better: Rethinking transferability metrics, their peculiarities, stability and performance", ECML-PKDD 2022.

    With f (N, D) the features and g_i = E[f | y_i] each sample's class mean (covariances with 1/N):

        H = tr( cov(f)^+ cov(g) )                                    shrinkage=False or 0 (pseudo-inverse)
        H_a = tr( ((1 - a) cov(f) + a mu I)^-1 (1 - a) cov(g) ),  mu = tr(cov(f)) / D     otherwise

    where a is the Ledoit-Wolf shrinkage intensity (shrinkage=True) or the given float in [0, 1]. The scaled
    between-class term (1 - a) cov(g) is the paper's: the same shrinkage applied to both covariances.

    Why shrinkage: cov(f) has rank <= N - 1, so for D >= N - 1 the plain score saturates at K - 1 for any
    labelling, and for D near N its small eigenvalues are mostly noise that the inverse amplifies. 0 <= H <= K - 1.
    The plain score is unchanged by any invertible affine map of the features; the shrunk one by translations,
    rotations and isotropic scaling.

    Args:
        features: (N, D) features of the target samples.
        labels: (N,) class ids, at least 2 classes.
        shrinkage: True for Ledoit-Wolf, False for the original estimator, or a fixed intensity in [0, 1].

    Returns:
        The H-score; higher is better.

    Raises:
        DataError: bad shapes, non-finite or constant features, one class, too few samples, bad shrinkage.
    """
    if not isinstance(shrinkage, (bool, int, float, np.floating)) or (
            not isinstance(shrinkage, bool) and not 0.0 <= float(shrinkage) <= 1.0):
        raise DataError(f"shrinkage must be True (Ledoit-Wolf), False (none) or a number in [0, 1]; got {shrinkage!r}.")
    f = _check_features(features)
    codes, k = _check_labels(labels, len(f))
    n, d = f.shape
    fc = f - f.mean(0)  # both covariances are centred: translation cannot change the score
    cov = fc.T @ fc / n  # (D, D)
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    means = _one_hot(codes, k).T @ fc / counts[:, None]  # (K, D) class means of centred features
    # cov(g) = sum_k (n_k / N) mu_k mu_k^T = B^T B with B's rows sqrt(n_k / N) mu_k: keeps it at rank K - 1, (K, D)
    b = np.sqrt(counts / n)[:, None] * means
    mu = np.trace(cov) / d
    if mu <= 0:
        raise DataError(f"features are constant across all {n} samples, so they cannot separate classes; check the "
                        f"feature extraction (a dead or untrained layer?).")
    a = 0.0 if shrinkage is False else _ledoit_wolf_shrinkage(fc, cov) if shrinkage is True else float(shrinkage)
    if a == 0.0:
        w, v = np.linalg.eigh(cov)
        # Pseudo-inverse: eigenvalues below the round-off of the covariance (eps * D * largest) are its null space.
        keep = w > w.max() * d * np.finfo(np.float64).eps
        proj = b @ v[:, keep]  # (K, r)
        return float((proj**2 / w[keep]).sum())
    if a >= 1.0:
        return 0.0  # all weight on the isotropic target, and (1 - a) cov(g) = 0
    shrunk = (1 - a) * cov
    shrunk[np.diag_indices(d)] += a * mu  # positive definite for a > 0, since mu > 0: a plain solve is safe
    x = np.linalg.solve(shrunk, b.T)  # (D, K)
    return float((1 - a) * (b.T * x).sum())


def _ledoit_wolf_shrinkage(fc: np.ndarray, cov: np.ndarray) -> float:
    r"""Ledoit & Wolf (2004) intensity a* for shrinking cov towards mu I, from centred data fc (N, D).

    With S = fc^T fc / N, mu = tr(S) / D: d2 = ||S - mu I||_F^2, b2_bar = 1/N^2 sum_i ||x_i x_i^T - S||_F^2
    = 1/N^2 (sum_i ||x_i||^4 - N ||S||_F^2), b2 = min(b2_bar, d2), a* = b2 / d2 (Frobenius norms unnormalised;
    the 1/D of the paper's norm cancels in the ratio). Same estimate as sklearn.covariance.ledoit_wolf_shrinkage.
    """
    n, d = fc.shape
    mu = np.trace(cov) / d
    s_fro2 = float((cov**2).sum())
    d2 = s_fro2 - 2 * mu * np.trace(cov) + mu**2 * d  # ||S - mu I||_F^2 without forming S - mu I
    if d2 <= s_fro2 * 1e-12:
        return 0.0  # S is already a multiple of I: shrinking towards it changes nothing, so don't scale cov(g)
    b2_bar = (float(((fc**2).sum(1) ** 2).sum()) - n * s_fro2) / n**2
    return float(min(max(b2_bar, 0.0), d2) / d2)


# ---------------------------------------------------------------------------------------------------------
# linear-probe proxy


def stratified_folds(codes: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Held-out index sets of a stratified k-fold split: each class's samples, shuffled, are dealt to the folds
    in turn, so every fold holds each class in proportion. (scikit-learn's StratifiedKFold does the same; its
    import alone took 1.5 s of a 45 s `auto` budget.)"""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(codes), dtype=np.int64)
    start = 0  # each class continues the deal where the last stopped, so fold sizes differ by one at most
    for c in np.unique(codes):
        members = rng.permutation(np.flatnonzero(codes == c))
        fold_of[members] = (start + np.arange(len(members))) % folds
        start += len(members)
    return [np.flatnonzero(fold_of == f) for f in range(folds)]


def linear_probe_proxy(features: ArrayLike, labels: ArrayLike, folds: int = 5, seed: int = 0, *,
                       l2: float = 1.0) -> float:
    r"""Stratified k-fold accuracy of a ridge classifier on standardised features: a cheap linear-probe proxy.

    Per fold, features are standardised with the training part's mean and std, then one-hot targets Y are fitted
    by ridge regression W = (X^T X + l2 N_train I)^-1 X^T Y (intercept unpenalised, via centring), and a sample
    is assigned the arg-max class. All folds share one Gram matrix: X_train^T X_train = X^T X - X_test^T X_test,
    so the cost is one (N, D) Gram product plus one D x D solve per fold (about 1-2 s for 5k x 1280 on 2 cores).

    Regularised least-squares classification is a squared-loss stand-in for logistic regression, usually close
    to it in accuracy (Rifkin & Klautau, "In Defense of One-Vs-All Classification", JMLR 2004); it needs no
    iterations or learning rate, and its ranking of feature sets is what matters here.

    Args:
        features: (N, D) features of the target samples.
        labels: (N,) class ids; every class needs at least 2 samples.
        folds: number of stratified folds, reduced to the smallest class size if that is smaller (min 2).
        seed: shuffles the fold assignment.
        l2: ridge strength relative to the (unit) variance of each standardised feature. Of 1e-4..10, 1 was
            best or within 1.5 points of best on EfficientNet-Lite0 features of Fashion-MNIST (600 x 1280),
            sklearn digits pixels (1797 x 64) and random-ReLU features of them (N > D and N < D); against a
            5-fold logistic regression it was +1, -0.7 and -4.5 points on those three.

    Returns:
        Accuracy pooled over all held-out samples, in [0, 1]; higher is better.

    Raises:
        DataError: bad shapes, non-finite features, one class, a class with a single sample, bad folds or l2.
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise DataError(f"folds must be an integer >= 2; got {folds!r}.")
    if not l2 > 0:
        raise DataError(f"l2 must be a positive number; got {l2!r}.")
    f = _check_features(features)
    codes, k = _check_labels(labels, len(f))
    counts = np.bincount(codes, minlength=k)
    if counts.min() < 2:
        raise DataError(f"linear_probe needs at least 2 samples in every class to hold one out; class index "
                        f"{int(counts.argmin())} (in sorted label order) has {int(counts.min())}. Drop that class or "
                        f"add samples.")
    n, d = f.shape
    y = _one_hot(codes, k)
    # Work relative to the global mean: it does not change the per-fold centring below but keeps the Gram
    # entries small, so subtracting the held-out part loses no precision.
    x = f - f.mean(0)
    gram, xty, xsum = x.T @ x, x.T @ y, x.sum(0)
    correct = 0
    for test in stratified_folds(codes, min(int(folds), int(counts.min())), seed):
        xt = x[test]
        n_tr = n - len(test)
        mean = (xsum - xt.sum(0)) / n_tr  # (D,)
        ymean = (y.sum(0) - y[test].sum(0)) / n_tr  # (K,)
        cov = (gram - xt.T @ xt) / n_tr - np.outer(mean, mean)  # centred training covariance (D, D)
        cross = (xty - xt.T @ y[test]) / n_tr - np.outer(mean, ymean)  # (D, K)
        std = np.sqrt(np.maximum(np.diag(cov), 0.0))
        std[std <= std.max(initial=0.0) * 1e-12] = 1.0  # constant features stay (at ~0) instead of dividing by 0
        a = cov / np.outer(std, std)
        a[np.diag_indices(d)] += l2
        w = np.linalg.solve(a, cross / std[:, None])  # (D, K) weights on standardised features
        pred = (((xt - mean) / std) @ w + ymean).argmax(1)
        correct += int((pred == codes[test]).sum())
    return correct / n


# ---------------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class ScoreInfo:
    """A registered transferability score: its function, the inputs it reads besides labels, and its direction."""

    name: str
    fn: Callable[..., float]
    needs: tuple[str, ...]  # each of "features", "source_probs", "source_labels"
    higher_is_better: bool = True
    summary: str = ""


SCORES: Registry[ScoreInfo] = Registry("transferability score")

for _info in (
    ScoreInfo("logme", logme, ("features",), summary="LogME evidence of a Bayesian linear model (You et al. 2021)"),
    ScoreInfo("leep", leep, ("source_probs",), summary="LEEP from source-model probabilities (Nguyen et al. 2020)"),
    ScoreInfo("nce", nce, ("source_labels",), summary="negative conditional entropy of labels given source labels "
                                                      "(Tran et al. 2019)"),
    ScoreInfo("h_score", h_score, ("features",), summary="H-score with Ledoit-Wolf shrinkage (Bao et al. 2019; "
                                                         "Ibrahim et al. 2022)"),
    ScoreInfo("linear_probe", linear_probe_proxy, ("features",), summary="k-fold ridge-classifier accuracy on the "
                                                                         "features"),
):
    SCORES.register(_info.name, help=_info.summary)(_info)
del _info


def score(name: str, *, labels: ArrayLike, features: ArrayLike | None = None,
          source_probs: ArrayLike | None = None, source_labels: ArrayLike | None = None, **options: Any) -> float:
    """Compute the registered score `name` from whichever inputs it reads; the others are ignored.

    `source_labels` defaults to `source_probs.argmax(1)` (the source model's hard predictions), so a workflow that
    has the source model's probabilities can compute every score. `options` go to the score function
    (e.g. `shrinkage=False` for h_score, `folds=10` for linear_probe).

    Example:
        >>> score("logme", features=feats, labels=y)  # doctest: +SKIP
        >>> [score(s, features=feats, source_probs=probs, labels=y) for s in SCORES]  # doctest: +SKIP
    """
    info = SCORES.get(name)
    given = {"features": features, "source_probs": source_probs, "source_labels": source_labels}
    have = {k for k, v in given.items() if v is not None}
    if "source_probs" in have:
        have.add("source_labels")  # derivable, see below
    missing = [k for k in info.needs if k not in have]
    if missing:
        what = {"features": "features=(N, D) backbone features",
                "source_probs": "source_probs=(N, Z) source-model softmax outputs",
                "source_labels": "source_labels=(N,) source-model predicted classes (or source_probs=)"}
        usable = [s for s in SCORES if set(SCORES.get(s).needs) <= have]
        raise DataError(f"score {name!r} needs {' and '.join(what[m] for m in missing)}, which was not given. Pass it"
                        + (f", or use a score that reads what was given: {', '.join(usable)}." if usable else "."))
    if "source_labels" in info.needs and source_labels is None:
        p = _to_numpy(source_probs, "source_probs")
        if p.ndim != 2:
            raise DataError(f"source_probs must be a 2-D array (N, Z) of probabilities; got shape {tuple(p.shape)}.")
        given["source_labels"] = p.argmax(1)
    return info.fn(*(given[k] for k in info.needs), labels, **options)
