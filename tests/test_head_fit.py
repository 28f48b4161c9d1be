"""A linear probe's head fitted on the cached features (run/head_fit.py): the optimum of the run's own loss
plus the chosen L2, reached in one pass, and the epoch loop wherever that problem is not convex."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import headstart as hs
from conftest import without_timings
from headstart.bundle import load_model
from headstart.data import from_arrays, make_batcher
from headstart.errors import ConfigError
from headstart.features import extract_features
from headstart.linear_fit import L2_GRID, standardise
from headstart.objectives import balanced_class_weights
from headstart.run import trainer
from headstart.runtime import predict_outputs

FAST = dict(progress=False, batch_size=8, eval_batch_size=32)


def features_of(model, split) -> torch.Tensor:
    model.eval()
    return extract_features(model.backbone, make_batcher(split, model.spec, train=False))


def penalised_loss_gradient(model, x, y, l2: float, weight=None) -> float:
    """Largest gradient entry of the fitted problem (mean weighted cross-entropy + l2/2 |W|^2, W on features
    standardised as the fit standardises them) at the head's weights."""
    layer = model.head[-1]
    _, std = standardise(x.double())
    w = layer.weight.detach().double().clone().requires_grad_(True)
    b = layer.bias.detach().double().clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x.double() @ w.T + b, y, weight=weight)
    loss = loss + 0.5 * l2 * (w * std).pow(2).sum()  # the penalty is on the standardised coordinates' weights
    loss.backward()
    # in standardised coordinates the weight gradient is std times smaller than in raw ones
    return max(float((w.grad / std).abs().max()), float(b.grad.abs().max()))


def test_the_fitted_head_is_the_optimum_and_the_backbone_is_untouched(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn", 3)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    run = hs.fit(model, tiny_data, "linear-probe", epochs=4, precision="fp32", out=tmp_path / "r", **FAST)
    assert [r["epoch"] for r in run.history] == [1]  # one fit is the whole run
    row = run.history[0]
    assert row["head_l2"] in L2_GRID and row["inputs"] == "cached features"
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone[k]), f"{k} changed under a fitted linear probe"
    x, y = features_of(model, tiny_data.train), tiny_data.train.targets
    # a stationary point of the penalised loss: the gradient vanishes (a trained head's would not)
    assert penalised_loss_gradient(model, x, y, row["head_l2"]) < 1e-3
    assert row["train/loss"] == pytest.approx(
        torch.nn.functional.cross_entropy(model.forward_head(x), y).item(), rel=1e-4)
    # the saved bundle is that head: it predicts the test metrics the run reported
    best = load_model(tmp_path / "r" / "best")
    outputs = predict_outputs(best, make_batcher(tiny_data.test, best.spec, train=False))
    accuracy = float((outputs.argmax(1) == tiny_data.test.targets).float().mean())
    assert accuracy == pytest.approx(run.test_metrics["test/accuracy"])


def test_the_fit_reaches_what_epochs_at_the_default_rate_do_not(tiny_data, tmp_path):
    fitted = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "linear-probe", epochs=3, out=tmp_path / "f", **FAST)
    torch.manual_seed(0)
    trained = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "linear-probe", epochs=3, solver="sgd",
                     out=tmp_path / "s", **FAST)
    assert len(trained.history) == 3 and "head_l2" not in trained.history[0]
    assert fitted.history[0]["train/loss"] < trained.history[-1]["train/loss"]
    assert fitted.best_metrics["val/accuracy"] == 1.0  # separable classes


def test_class_weights_of_the_run_are_the_fits_loss(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0] * 60 + [1] * 8)
    # overlapping classes (the rare one a little brighter): weighting them moves the optimum
    x = np.clip(rng.integers(0, 200, (68, 8, 8, 3)) + 30 * y[:, None, None, None], 0, 255).astype(np.uint8)
    data = from_arrays(x, y, classes=["common", "rare"], val_fraction=0.25, seed=0, name="imbalanced")
    model = hs.create_model("toy:cnn", 2)
    run = hs.fit(model, data, "linear-probe", class_weights="balanced", precision="fp32", out=tmp_path / "r", **FAST)
    weight = balanced_class_weights(data.train.targets, 2).double()  # the rare class counts more
    feats, l2 = features_of(model, data.train), run.history[0]["head_l2"]
    weighted = penalised_loss_gradient(model, feats, data.train.targets, l2, weight=weight)
    unweighted = penalised_loss_gradient(model, feats, data.train.targets, l2)
    assert weighted < 1e-3 and unweighted > 10 * weighted  # the weighted loss's optimum, not the unweighted one


def test_ridge_head_for_a_regression(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(100, 16, 16, 3)).astype(np.uint8)
    model = hs.create_model("toy:cnn", 1, task="regression")
    model.eval()
    # a target that is linear in the frozen features: the fitted ridge head recovers it
    feats = extract_features(model.backbone, make_batcher(
        from_arrays(x, np.zeros(100, np.float32), None, val_fraction=0.0, name="x").train, model.spec, train=False))
    y = (feats @ torch.randn(feats.shape[1], generator=torch.Generator().manual_seed(1))).numpy()
    data = from_arrays(x[:70], y[:70], None, x_val=x[70:85], y_val=y[70:85], x_test=x[85:], y_test=y[85:],
                       name="linear")
    run = hs.fit(model, data, "linear-probe", out=tmp_path / "r", **FAST)
    assert "head fitted: ridge regression" in (tmp_path / "r" / "trainable.txt").read_text()
    assert run.test_metrics["test/mse"] < 0.01 * float(np.var(y[85:]))


@pytest.mark.parametrize("settings, why", [
    (dict(head="mlp"), "the head is not linear"),
    (dict(cache="off"), "features are not cached"),
    (dict(l2sp_beta=0.01), "the strategy adds a regulariser"),
])
def test_where_the_problem_is_not_convex_the_head_trains_by_epochs(tiny_data, tmp_path, settings, why):
    head = settings.pop("head", "linear")
    model = hs.create_model("toy:cnn", 3, head=head)
    run = hs.fit(model, tiny_data, "linear-probe", epochs=2, out=tmp_path / "r", **settings, **FAST)
    assert len(run.history) == 2 and "head_l2" not in run.history[0]
    assert f"head trained by epochs: {why}" in (tmp_path / "r" / "trainable.txt").read_text()
    # asked for explicitly, the fit names what stands in its way
    with pytest.raises(ConfigError, match=f"strategy.solver fit needs a convex head problem that fits in memory, and here {why}"):
        hs.fit(hs.create_model("toy:cnn", 3, head=head), tiny_data, "linear-probe", solver="fit",
               out=tmp_path / "f", **settings, **FAST)


def test_an_unknown_solver_is_refused(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown strategy.solver 'newton'; choose one of auto, fit, sgd"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "linear-probe", solver="newton", out=tmp_path / "r", **FAST)


def test_several_processes_train_the_head_by_epochs(tiny_data):
    from headstart.objectives import task_objective
    from headstart.run.head_fit import head_solver
    from headstart.run.settings import TrainSettings
    from headstart.strategies import get_strategy

    model = hs.create_model("toy:cnn", 3)
    objective = task_objective(model, tiny_data.train.targets)
    probe = get_strategy("linear-probe")
    assert head_solver(probe, model, tiny_data, objective, TrainSettings(), 1).fits
    two = head_solver(probe, model, tiny_data, objective, TrainSettings(), 2)
    assert not two.fits and "2 processes share the training split" in two.why
    assert not head_solver(get_strategy("full"), model, tiny_data, objective, TrainSettings(), 1).fits


# ------------------------------------------------------------------------------ train.head_init fit

def test_head_init_fit_starts_fine_tuning_from_the_fitted_probe(tiny_data, tmp_path):
    common = dict(precision="fp32", **FAST)
    probe = hs.create_model("toy:cnn", 3)
    hs.fit(probe, tiny_data, "linear-probe", out=tmp_path / "probe", **common)
    torch.manual_seed(0)
    model = hs.create_model("toy:cnn", 3)
    # bn frozen and a vanishing rate: one epoch of full fine-tuning leaves the start in place
    hs.fit(model, tiny_data, "full", epochs=1, lr=1e-12, bn="frozen", head_init="fit", out=tmp_path / "ft", **common)
    for k, v in probe.head.state_dict().items():
        torch.testing.assert_close(model.head.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    assert "head initialised by a fit on the frozen backbone's features" in (tmp_path / "ft" / "trainable.txt").read_text()


def test_a_head_init_fit_run_resumes_bit_for_bit(tiny_data, tmp_path, monkeypatch):
    def run(out, resume=False):
        torch.manual_seed(0)
        return hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=3, lr=0.01, head_init="fit",
                      out=out, resume=resume, **FAST)

    whole = run(tmp_path / "a")
    real = trainer.train_epoch

    def killed_in_epoch_2(*a, **kw):
        if kw["epoch"] == 1:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(trainer, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(trainer, "train_epoch", real)
    resumed = run(tmp_path / "b", resume=True)  # the head is not fitted again over what it trained
    assert without_timings(resumed.history) == without_timings(whole.history)
    assert resumed.test_metrics == whole.test_metrics


def test_head_init_fit_where_no_fit_applies_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="train.head_init fit needs a head that a convex fit can start, and here "
                                          "the head is not linear"):
        hs.fit(hs.create_model("toy:cnn", 3, head="mlp"), tiny_data, "full", head_init="fit", out=tmp_path / "r",
               **FAST)


def test_non_finite_features_are_a_clear_error_not_a_nan_head(tiny_data, tmp_path):
    class Broken(torch.nn.Module):
        """Mean colour per channel, NaN for bright red pictures (as a backbone overflowing on some inputs)."""

        def forward(self, x):
            out = x.mean((2, 3))
            return torch.where((out[:, :1] > out[:, 1:2] + 0.5), torch.full_like(out, float("nan")), out)

    red = tiny_data.train.images[:, 0].float().mean((1, 2)) - tiny_data.train.images[:, 1].float().mean((1, 2))
    assert (red > 0).any()  # the palette has a reddish class for the backbone to fail on
    with pytest.raises(hs.HeadstartError, match=r"non-finite features for \d+ of \d+ training samples"):
        hs.fit(hs.create_model(Broken(), 3), tiny_data, "linear-probe", out=tmp_path / "r", **FAST)


def test_a_fitted_head_extracts_the_plain_view_only(tiny_data, tmp_path, monkeypatch):
    import headstart.run.inputs as inputs

    views, real = [], inputs.cached_features
    monkeypatch.setattr(inputs, "cached_features",
                        lambda *a, **k: views.append(k.get("view", "plain")) or real(*a, **k))
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "linear-probe", cache_views=3, augment=True,
           out=tmp_path / "fit", **FAST)
    assert views == ["plain"] * 3  # train, val and test; no augmented copies for a fit that reads none
    views.clear()
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "linear-probe", cache_views=3, augment=True, solver="sgd",
           epochs=1, out=tmp_path / "sgd", **FAST)
    assert len(views) == 5 and views.count("plain") == 3  # the loop cycles through three views of train


def test_too_many_feature_entries_train_the_head_by_epochs(tiny_data, tmp_path, monkeypatch):
    import headstart.run.head_fit as head_fit

    monkeypatch.setattr(head_fit, "MAX_FIT_ENTRIES", 100)  # the toy CNN's 54 x 32 training features exceed it
    run = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "linear-probe", epochs=2, out=tmp_path / "r", **FAST)
    assert len(run.history) == 2
    assert "head trained by epochs: the training features (54 x 32)" in (tmp_path / "r" / "trainable.txt").read_text()
