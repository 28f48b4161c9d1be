"""Transferability scores: hand-computed values, the invariances each paper states, informative beats shuffled,
LogME's fixed point against brute-force evidence maximisation, and a clear error for every bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headstart.errors import DataError
from headstart.registry import UnknownNameError
from headstart.plan.transferability import (SCORES, _ledoit_wolf_shrinkage, h_score, leep, linear_probe_proxy, logme,
                                            nce, score, stratified_folds)


def blobs(n_per_class: int = 20, k: int = 4, d: int = 8, spread: float = 4.0, seed: int = 0):
    """Features whose class is a far-apart mean plus unit noise: linearly separable in practice."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, size=(k, d))
    y = np.repeat(np.arange(k), n_per_class)
    return centers[y] + rng.normal(size=(len(y), d)), y


def informative_probs(y: np.ndarray, z_classes: int = 6, seed: int = 0) -> np.ndarray:
    """Source probabilities that mostly point at source class 2*y (+ noise): they carry the label."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), z_classes))
    logits[np.arange(len(y)), (2 * y) % z_classes] += 4.0
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def shuffled(y: np.ndarray, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).permutation(y)


# ---------------------------------------------------------------------------------------------------------
# the registry and score()


def test_registry_lists_every_score_with_its_inputs():
    assert SCORES.list() == ["h_score", "leep", "linear_probe", "logme", "nce"]
    for name in SCORES:
        info = SCORES.get(name)
        assert info.name == name and info.higher_is_better
        assert set(info.needs) <= {"features", "source_probs", "source_labels"} and info.needs
        assert SCORES.help(name)
    assert SCORES.get("logme").needs == ("features",) and SCORES.get("leep").needs == ("source_probs",)


@pytest.mark.parametrize("name", SCORES.list())
def test_every_score_ranks_informative_inputs_above_shuffled_labels(name):
    f, y = blobs()
    probs = informative_probs(y)
    good = score(name, features=f, source_probs=probs, labels=y)
    bad = score(name, features=f, source_probs=probs, labels=shuffled(y))
    assert isinstance(good, float) and math.isfinite(good) and math.isfinite(bad)
    assert good > bad


@pytest.mark.parametrize("name", SCORES.list())
def test_every_score_accepts_torch_tensors_and_matches_numpy(name):
    f, y = blobs()
    probs = informative_probs(y)
    from_np = score(name, features=f, source_probs=probs, labels=y)
    from_torch = score(name, features=torch.from_numpy(f).float(), source_probs=torch.from_numpy(probs).float(),
                       labels=torch.from_numpy(y))
    assert from_torch == pytest.approx(from_np, rel=1e-4, abs=1e-5)  # float32 rounding of the inputs only


def test_score_derives_source_labels_from_probs_and_passes_options():
    f, y = blobs()
    probs = informative_probs(y)
    assert score("nce", source_probs=probs, labels=y) == nce(probs.argmax(1), y)
    assert score("h_score", features=f, labels=y, shrinkage=False) == h_score(f, y, shrinkage=False)


def test_score_names_the_missing_input_and_what_would_work():
    f, y = blobs()
    with pytest.raises(DataError, match=r"'leep' needs source_probs=\(N, Z\).*h_score, linear_probe, logme"):
        score("leep", features=f, labels=y)
    with pytest.raises(DataError, match="'logme' needs features="):
        score("logme", source_labels=y, labels=y)


def test_unknown_score_lists_the_valid_names():
    with pytest.raises(UnknownNameError, match="Did you mean 'logme'.*Valid choices: h_score, leep"):
        score("logm", features=np.zeros((4, 2)), labels=[0, 1, 0, 1])


# ---------------------------------------------------------------------------------------------------------
# LogME


def _log_marginal(f: np.ndarray, y: np.ndarray, log_a: np.ndarray, log_b: np.ndarray) -> np.ndarray:
    """Evidence straight from its definition, for a batch of (alpha, beta): integrating w out of the model gives
    y ~ N(0, C) with C = beta^-1 I + alpha^-1 F F^T. Independent of the spectral formulas the module uses."""
    n, out = len(f), []
    for i in range(0, len(log_a), 2048):  # chunks keep the (G, N, N) stack small
        a, b = np.exp(-log_a[i:i + 2048]), np.exp(-log_b[i:i + 2048])
        c = b[:, None, None] * np.eye(n) + a[:, None, None] * (f @ f.T)
        _, logdet = np.linalg.slogdet(c)
        quad = np.linalg.solve(c, np.broadcast_to(y, (len(c), n))[..., None])[..., 0] @ y
        out.append(-0.5 * quad - 0.5 * logdet - n / 2 * math.log(2 * math.pi))
    return np.concatenate(out)


def _brute_force_logme(f: np.ndarray, labels: np.ndarray) -> float:
    """max over a log-grid of (alpha, beta), refined once around the best cell; averaged over classes, / N."""
    best = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        axis = np.linspace(-14, 14, 113)  # step 0.25
        la, lb = (g.ravel() for g in np.meshgrid(axis, axis))
        ev = _log_marginal(f, y, la, lb)
        a0, b0 = la[ev.argmax()], lb[ev.argmax()]
        fine = np.linspace(-0.3, 0.3, 61)  # step 0.01
        la, lb = (g.ravel() for g in np.meshgrid(a0 + fine, b0 + fine))
        best.append(_log_marginal(f, y, la, lb).max())
    return float(np.mean(best) / len(f))


@pytest.mark.parametrize("n,d", [(24, 3), (8, 12)], ids=["D<N", "N<D"])
def test_logme_fixed_point_reaches_the_brute_force_maximum_evidence(n, d):
    rng = np.random.default_rng(3)
    labels = np.arange(n) % 3
    f = 1.5 * np.eye(d)[labels % d] + rng.normal(size=(n, d))
    value, brute = logme(f, labels), _brute_force_logme(f, labels)
    # The grid can only undershoot the true maximum (fine step 0.01 in log space: < 1e-4 per sample here), and for
    # N < D one class peaks at beta -> inf, where the grid edge e^14 is within ~1e-5 of the limit.
    assert value >= brute - 1e-9
    assert value - brute < 5e-4


def test_logme_uninformative_class_reaches_the_closed_form_limit():
    # Class 0 rows are all-zero features: F^T y_0 = 0, the evidence peaks at alpha -> inf (w = 0) with
    # beta = N / n_0, i.e. L_0 = N/2 (log(N / n_0) - 1 - log 2 pi). Class 1 is the same by symmetry of the data.
    f = np.zeros((6, 3))
    labels = np.array([0, 0, 0, 1, 1, 1])
    expected = 3 * (math.log(2) - 1 - math.log(2 * math.pi))  # N/2 = 3, N / n_k = 2
    assert logme(f, labels) == pytest.approx(expected / 6, abs=1e-12)


def test_logme_invariances():
    f, y = blobs(15, k=3, d=6)
    base = logme(f, y)
    rng = np.random.default_rng(0)
    perm = np.array([2, 0, 1])
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    order = rng.permutation(len(y))
    assert logme(f, perm[y]) == pytest.approx(base, abs=1e-12)  # renaming classes: the mean over classes
    assert logme(f[order], y[order]) == pytest.approx(base, abs=1e-10)  # sample order
    assert logme(f @ q, y) == pytest.approx(base, abs=1e-8)  # the prior on w is isotropic
    assert logme(1e3 * f, y) == pytest.approx(base, abs=1e-8)  # alpha absorbs the feature scale
    # Zero columns add zero eigenvalues, which the evidence ignores; with D > N this runs the F F^T path.
    padded = np.hstack([f, np.zeros((len(f), 60))])
    assert padded.shape[1] > len(f)
    assert logme(padded, y) == pytest.approx(base, abs=1e-8)


def test_logme_separable_features_beat_shuffled_and_noise():
    f, y = blobs()
    noise = np.random.default_rng(5).normal(size=f.shape)
    assert logme(f, y) > logme(f, shuffled(y)) + 0.2
    assert logme(f, y) > logme(noise, y) + 0.2


# ---------------------------------------------------------------------------------------------------------
# LEEP


def test_leep_of_a_worked_example():
    probs = np.array([[0.8, 0.2], [0.8, 0.2], [0.3, 0.7], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 1])
    # joint P(y, z) = [[0.4, 0.1], [0.15, 0.35]]; P(z) = [0.55, 0.45]
    p_y_given_z = np.array([[0.4 / 0.55, 0.1 / 0.45], [0.15 / 0.55, 0.35 / 0.45]])
    eep_0 = 0.8 * p_y_given_z[0, 0] + 0.2 * p_y_given_z[0, 1]
    eep_1 = 0.3 * p_y_given_z[1, 0] + 0.7 * p_y_given_z[1, 1]
    assert leep(probs, labels) == pytest.approx((math.log(eep_0) + math.log(eep_1)) / 2, abs=1e-12)


def test_leep_is_zero_when_one_hot_source_predictions_determine_the_label():
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    probs = np.eye(5)[np.array([3, 0, 4])[labels]]  # source class 3 <=> label 0, 0 <=> 1, 4 <=> 2
    assert leep(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_leep_with_uninformative_source_is_minus_label_entropy():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    probs = np.tile([0.2, 0.5, 0.3], (8, 1))  # every sample gets the same prediction
    h_y = -(3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(5 / 8))
    assert leep(probs, labels) == pytest.approx(-h_y, abs=1e-12)


def test_leep_of_one_hot_predictions_equals_nce_of_their_argmax():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 40)
    z = np.where(rng.random(40) < 0.6, labels, rng.integers(0, 5, 40))  # partly informative source labels
    assert leep(np.eye(5)[z], labels) == pytest.approx(nce(z, labels), abs=1e-12)


def test_leep_invariances_and_direction():
    _, y = blobs()
    probs = informative_probs(y)
    base = leep(probs, y)
    perm = np.random.default_rng(0).permutation(probs.shape[1])
    assert leep(probs[:, perm], y) == pytest.approx(base, abs=1e-12)  # renaming source classes
    assert leep(probs, np.array([7, 3, 9, 1])[y]) == pytest.approx(base, abs=1e-12)  # renaming target classes
    assert leep(probs, shuffled(y)) < base - 0.3
    assert base <= 0.0
    # float32 softmax rows that sum to 1 - 1e-6 are accepted (and renormalised)
    assert leep((probs * (1 - 1e-6)).astype(np.float32), y) == pytest.approx(base, abs=1e-5)


# ---------------------------------------------------------------------------------------------------------
# NCE


def test_nce_of_a_worked_example():
    z = np.array([0, 0, 0, 1, 1, 1])
    y = np.array([0, 0, 1, 1, 1, 1])
    # H(Y | Z) = P(z=0) H(2/3, 1/3) + P(z=1) * 0
    h = 0.5 * -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert nce(z, y) == pytest.approx(-h, abs=1e-12)


def test_nce_closed_forms():
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    # A source that determines the target label (many-to-one is fine) leaves no conditional entropy.
    assert nce(np.array([5, 6, 1, 1, 2, 2, 5, 1]), y) == pytest.approx(0.0, abs=1e-12)
    # A single source class, or one independent of the target (every (z, y) pair equally often): -H(Y).
    h_y = -(2 * 3 / 8 * math.log(3 / 8) + 2 / 8 * math.log(2 / 8))
    assert nce(np.zeros(8, int), y) == pytest.approx(-h_y, abs=1e-12)
    assert nce([0, 1, 0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 0, 0, 1, 1]) == pytest.approx(-math.log(2), abs=1e-12)


def test_nce_invariances_and_direction():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    z = np.where(rng.random(200) < 0.7, 2 * y, rng.integers(0, 8, 200))
    base = nce(z, y)
    relabel = rng.permutation(8)
    assert nce(relabel[z], y) == pytest.approx(base, abs=1e-12)
    assert nce(z, np.array(["d", "a", "c", "b"])[y]) == pytest.approx(base, abs=1e-12)  # string ids work too
    assert nce(rng.integers(0, 8, 200), y) < base - 0.3
    assert -math.log(4) <= base <= 0.0


# ---------------------------------------------------------------------------------------------------------
# H-score


def test_h_score_of_a_worked_example():
    f = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([0, 0, 1, 1])
    # class means 0.5, 2.5 around 1.5: var(E[f|y]) = 1; var(f) = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    assert h_score(f, y, shrinkage=False) == pytest.approx(0.8, abs=1e-12)
    assert h_score(f, y) == pytest.approx(0.8, abs=1e-12)  # 1-D: cov is already isotropic, Ledoit-Wolf gives 0
    # fixed a = 0.5: ((1 - a) 1.25 + a 1.25)^-1 (1 - a) 1 = 0.4
    assert h_score(f, y, shrinkage=0.5) == pytest.approx(0.4, abs=1e-12)
    assert h_score(f, y, shrinkage=1.0) == 0.0
    blob_f, blob_y = blobs()
    assert h_score(blob_f, blob_y, shrinkage=0.0) == h_score(blob_f, blob_y, shrinkage=False)


def test_h_score_is_k_minus_1_without_within_class_spread():
    y = np.repeat(np.arange(4), 5)
    f = np.random.default_rng(0).normal(size=(4, 7))[y]  # every sample sits on its class mean
    assert h_score(f, y, shrinkage=False) == pytest.approx(3.0, abs=1e-9)


def test_h_score_invariances():
    f, y = blobs(15, k=3, d=6)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    m = rng.normal(size=(6, 6)) + 3 * np.eye(6)  # invertible, not orthogonal
    for shrink in (True, False, 0.3):
        base = h_score(f, y, shrink)
        assert h_score(f + 100.0, y, shrink) == pytest.approx(base, rel=1e-9)
        assert h_score(2.5 * f @ q, y, shrink) == pytest.approx(base, rel=1e-9)
        assert h_score(f, np.array([2, 0, 1])[y], shrink) == pytest.approx(base, rel=1e-12)
    assert h_score(f @ m, y, False) == pytest.approx(h_score(f, y, False), rel=1e-8)


def test_h_score_direction_bounds_and_why_shrinkage_is_default():
    f, y = blobs()
    for shrink in (True, False):
        good, bad = h_score(f, y, shrink), h_score(f, shuffled(y), shrink)
        assert 0.0 <= bad < good <= 3.0 + 1e-9
    # D >= N - 1: the plain score saturates at K - 1 for noise with random labels; the shrunk one stays small.
    rng = np.random.default_rng(0)
    noise, labels = rng.normal(size=(20, 40)), rng.integers(0, 2, 20)
    labels[:2] = [0, 1]
    assert h_score(noise, labels, shrinkage=False) == pytest.approx(1.0, abs=1e-6)
    assert h_score(noise, labels) < 0.5


def test_ledoit_wolf_intensity_matches_sklearn():
    from sklearn.covariance import ledoit_wolf_shrinkage

    rng = np.random.default_rng(0)
    # a typical case, and isotropic noise where the raw estimate exceeds 1 and must be clipped to full shrinkage
    for x in (rng.normal(size=(30, 12)) * np.linspace(0.5, 3, 12), np.random.default_rng(1).normal(size=(200, 5))):
        xc = x - x.mean(0)
        ours = _ledoit_wolf_shrinkage(xc, xc.T @ xc / len(x))
        assert ours == pytest.approx(ledoit_wolf_shrinkage(x), rel=1e-10) and 0.0 < ours <= 1.0


# ---------------------------------------------------------------------------------------------------------
# linear-probe proxy


def test_linear_probe_is_perfect_on_separable_and_near_chance_on_shuffled():
    f, y = blobs(30)
    assert linear_probe_proxy(f, y) == 1.0
    assert linear_probe_proxy(f, shuffled(y)) < 0.5  # 4 classes: chance is 0.25


def test_linear_probe_is_deterministic_and_handles_small_classes():
    f, y = blobs(10, k=3)
    f = f + np.random.default_rng(1).normal(scale=6, size=f.shape)  # overlap, so folds matter
    assert linear_probe_proxy(f, y, seed=3) == linear_probe_proxy(f, y, seed=3)
    y_small = y.copy()
    y_small[:8] = 1  # class 0 keeps 2 samples: folds drop to 2 instead of failing
    assert 0.0 <= linear_probe_proxy(f, y_small, folds=5) <= 1.0


def test_linear_probe_matches_a_plain_ridge_fit_per_fold():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    f, y = blobs(12, k=3, d=5)
    f = f + np.random.default_rng(2).normal(scale=5, size=f.shape)
    correct = 0
    for test in stratified_folds(y, 4, 7):  # l2 = 1 per sample
        train = np.setdiff1d(np.arange(len(y)), test)
        scaler = StandardScaler().fit(f[train])
        ridge = Ridge(alpha=1.0 * len(train)).fit(scaler.transform(f[train]), np.eye(3)[y[train]])
        correct += (ridge.predict(scaler.transform(f[test])).argmax(1) == y[test]).sum()
    assert linear_probe_proxy(f, y, folds=4, seed=7) == pytest.approx(correct / len(y))
    assert linear_probe_proxy(f, y, folds=4, seed=7, l2=1e-3) != linear_probe_proxy(f, y, folds=4, seed=7)


@pytest.mark.parametrize("counts", [(10, 7, 5), (3, 3), (40, 2, 9, 9)])
def test_stratified_folds_partition_the_samples_with_every_class_in_proportion(counts):
    codes = np.repeat(np.arange(len(counts)), counts)
    folds = stratified_folds(codes, 2 if min(counts) == 2 else 3, seed=0)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(len(codes)))  # each sample held out once
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c, n in enumerate(counts):  # each class spread over the folds as evenly as it can be
        per_fold = [int((codes[f] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == n
    assert [f.tolist() for f in folds] == [f.tolist() for f in stratified_folds(codes, len(folds), seed=0)]
    assert [f.tolist() for f in folds] != [f.tolist() for f in stratified_folds(codes, len(folds), seed=1)]


# ---------------------------------------------------------------------------------------------------------
# bad input: one clear error each


FEATURE_SCORES = ["logme", "h_score", "linear_probe"]


def _call(name: str, features, labels):
    return score(name, features=features, labels=labels)


@pytest.mark.parametrize("name", FEATURE_SCORES)
def test_feature_scores_refuse_bad_input_with_clear_messages(name):
    f, y = blobs(5, k=2, d=3)
    with pytest.raises(DataError, match=r"only one class \(0\) in 10 samples"):
        _call(name, f, np.zeros(10, int))
    with pytest.raises(DataError, match="got 4 samples for 3 classes"):
        _call(name, f[:4], np.array([0, 1, 2, 2]))
    bad = f.copy()
    bad[3, 1] = np.nan
    bad[7, 0] = np.inf
    with pytest.raises(DataError, match=r"1 NaN and 1 infinite values in 2 of 10 rows \(first at row 3\)"):
        _call(name, bad, y)
    with pytest.raises(DataError, match="labels has 9 entries but features has 10 rows"):
        _call(name, f, y[:9])
    with pytest.raises(DataError, match=r"2-D array \(N samples, D dims\); got shape \(10,\)"):
        _call(name, f[:, 0], y)
    with pytest.raises(DataError, match=r"got shape \(10, 3, 1\)"):
        _call(name, f[..., None], y)
    with pytest.raises(DataError, match=r"got shape \(10, 2\).*labels.argmax\(1\)"):
        _call(name, f, np.eye(2)[y])
    with pytest.raises(DataError, match="integer .*class ids; got dtype float64"):
        _call(name, f, y.astype(float))


def test_leep_and_nce_refuse_bad_input_with_clear_messages():
    y = np.array([0, 1, 0, 1, 2, 2])
    probs = np.full((6, 4), 0.25)
    with pytest.raises(DataError, match="row 2 sums to 1.5.*logits.softmax"):
        leep(np.where(np.arange(6)[:, None] == 2, 0.375, probs), y)
    with pytest.raises(DataError, match="smallest entry is -1"):
        leep(probs - np.array([1.25, -1.25, 0, 0]), y)  # rows sum to 1 but hold a negative value
    with pytest.raises(DataError, match=r"\(N samples, Z source classes\).*got shape \(6,\)"):
        leep(probs[:, 0], y)
    with pytest.raises(DataError, match="source_probs has 5 rows but labels has 6"):
        leep(probs[:5], y)
    with pytest.raises(DataError, match="NaN"):
        leep(np.where(np.eye(6, 4) > 0, np.nan, 0.25), y)
    with pytest.raises(DataError, match="only one class"):
        leep(probs, np.ones(6, int))
    with pytest.raises(DataError, match="labels has 6 entries but source_labels has 5"):
        nce(y[:5], y)
    with pytest.raises(DataError, match="got 3 samples for 3 classes"):
        nce([0, 0, 1], [0, 1, 2])
    with pytest.raises(DataError, match="source_labels must be integer"):
        nce(np.ones(6) * 0.5, y)


def test_score_specific_options_and_degenerate_features_are_checked():
    f, y = blobs(5, k=2, d=3)
    with pytest.raises(DataError, match=r"shrinkage must be .* in \[0, 1\]; got 1.5"):
        h_score(f, y, shrinkage=1.5)
    with pytest.raises(DataError, match="constant across all 10 samples"):
        h_score(np.ones((10, 3)), y)
    with pytest.raises(DataError, match="folds must be an integer >= 2; got 1"):
        linear_probe_proxy(f, y, folds=1)
    with pytest.raises(DataError, match="every class to hold one out; class index 2 .* has 1"):
        linear_probe_proxy(f[:7], np.array([0, 0, 0, 1, 1, 1, 2]))
    with pytest.raises(DataError, match=r"features is empty \(shape \(0, 3\)\)"):
        logme(f[:0], y[:0])
    with pytest.raises(DataError, match="labels are empty"):
        nce(np.array([], int), np.array([], int))
