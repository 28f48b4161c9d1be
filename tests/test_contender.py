"""auto's raw-input contender: the pixels backbone, the fitted linear models, and shipping the winner."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import headstart as hs
from headstart.bundle import load_model
from headstart.config import validate_config
from headstart.data import from_arrays, make_batcher
from headstart.errors import HeadstartError
from headstart.metrics import compute_metrics
from headstart.linear_fit import fit_linear, fit_ridge
from headstart.plan.contender import TRANSFER_DIR, raw_input_contender, settle
from headstart.runtime import predict_outputs

TRAIN = validate_config({"train": {}}).train  # the run's train config at its defaults


def test_pixels_backbone_has_no_parameters_and_pools_any_input_size():
    model = hs.create_model("pixels:4", 3)
    assert sum(p.numel() for p in model.backbone.parameters()) == 0 and model.spec.num_features == 48
    x = torch.rand(2, 3, 16, 16)
    pooled = x.reshape(2, 3, 4, 4, 4, 4).mean(dim=(3, 5)).flatten(1)  # 4x4 blocks of a 16 px image
    assert torch.allclose(model.backbone.forward_features(x), pooled, atol=1e-6)
    assert model.backbone.forward_features(torch.rand(2, 3, 40, 40)).shape == (2, 48)
    for bad in ("pixels:big", "pixels:0"):
        with pytest.raises(HeadstartError, match="grid side"):
            hs.create_model(bad, 3)


@pytest.mark.parametrize("n", [40, 400])  # fewer samples than features (the dual form) and more (the primal)
def test_ridge_recovers_a_linear_target_in_either_form(n):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 100, generator=g, dtype=torch.float64)
    y = x @ torch.randn(100, 2, generator=g, dtype=torch.float64) + 3.0
    w = fit_ridge(x, y, 1e-9)
    pred = x @ w[:-1] + w[-1]
    if n > 100:  # determined: the exact coefficients
        assert torch.allclose(pred, y, atol=1e-5)
    else:  # under-determined: the minimum-norm interpolant still fits every training target
        assert torch.allclose(pred, y, atol=1e-4)
    # primal and dual forms are the same estimator
    xc, yc = x - x.mean(0), y - y.mean(0)
    primal = torch.linalg.solve(xc.T @ xc + 0.5 * n * torch.eye(100, dtype=x.dtype), xc.T @ yc)
    assert torch.allclose(fit_ridge(x, y, 0.5)[:-1], primal, atol=1e-8)


def test_logistic_fit_folds_its_standardisation_into_the_layer_and_separates_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g) * 3 + 50  # far from the origin: the folded mean matters
    labels = torch.arange(3).repeat_interleave(30)
    x = centres[labels] + torch.randn(90, 20, generator=g)
    xv = centres[labels] + torch.randn(90, 20, generator=g)
    accuracy = lambda out: float((out.argmax(1) == labels).float().mean())  # noqa: E731
    weight, bias, l2, score = fit_linear(x, labels, xv, "classification", 3, accuracy)
    assert weight.shape == (3, 20) and bias.shape == (3,)
    assert accuracy(xv @ weight.T + bias) == score > 0.95 and l2 in (1.0, 0.1, 0.01, 0.001)


@pytest.fixture
def shifted_target_data():
    """Images whose regression target is the top-left quarter's brightness less the bottom-right's: linear in
    the pixels, and out of reach of features pooled over the whole image (the toy CNN's)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(120, 16, 16, 3)).astype(np.uint8)
    y = (x[:, :8, :8].reshape(120, -1).mean(1) - x[:, 8:, 8:].reshape(120, -1).mean(1)).astype(np.float32) / 255.0
    return from_arrays(x[:80], y[:80], None, x_val=x[80:100], y_val=y[80:100], x_test=x[100:], y_test=y[100:],
                       name="brightness")


def test_a_contender_that_wins_on_val_is_shipped_with_its_test_metrics(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn", 3)
    run = hs.fit(model, tiny_data, "linear-probe", epochs=1, batch_size=8, progress=False, out=tmp_path / "r")
    trained_test = json.loads((tmp_path / "r" / "test_metrics.json").read_text())
    contender = raw_input_contender(model, tiny_data, TRAIN)
    run.best_metrics["val/accuracy"] = 0.0  # as if training had failed: the contender must win
    record = settle(contender, run, tiny_data)
    assert record["shipped"] and run.extra["contender"] is record
    shipped = load_model(tmp_path / "r" / "best")
    assert shipped.spec.source.startswith("pixels:")
    outputs = predict_outputs(shipped, make_batcher(tiny_data.test, shipped.spec, train=False))
    test = json.loads((tmp_path / "r" / "test_metrics.json").read_text())
    assert test["test/accuracy"] == pytest.approx(compute_metrics(outputs, tiny_data.test.targets,
                                                                  ["accuracy"])["accuracy"])
    assert torch.allclose(run.test_outputs, outputs, atol=1e-5) and run.test_metrics == test
    # the trained model is kept beside it, whole
    kept = tmp_path / "r" / TRANSFER_DIR
    assert load_model(kept / "best").spec.source == "toy:cnn"
    assert json.loads((kept / "test_metrics.json").read_text()) == trained_test


def test_grey_pictures_are_fitted_on_one_channel_with_the_weights_shared_by_all(monkeypatch):
    from conftest import separable_images

    import headstart.plan.contender as module
    from headstart.plan.contender import grey_copies

    widths = []
    fit = module.fit_linear
    monkeypatch.setattr(module, "fit_linear", lambda x, *a, **k: widths.append(x.shape[1]) or fit(x, *a, **k))
    x, y = separable_images(30)
    grey = np.repeat(x[..., :1], 3, axis=-1)  # RGB pictures of grey: every channel the same
    data = from_arrays(grey, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="grey")
    contender = raw_input_contender(hs.create_model("toy:cnn", 3), data, TRAIN)
    assert widths == [side * side for side in module.PIXEL_GRIDS]  # one channel's pixels, not three
    weight = contender.model.head[-1].weight.detach()
    per_channel = weight.reshape(3, 3, -1)  # (classes, channels, pixels)
    assert torch.equal(per_channel[:, 0], per_channel[:, 1]) and torch.equal(per_channel[:, 1], per_channel[:, 2])
    assert contender.val_metrics["val/accuracy"] > 0.9
    assert grey_copies(torch.ones(2, 12), 3) and not grey_copies(torch.arange(24.0).reshape(2, 12), 3)
    assert not grey_copies(torch.ones(2, 4), 1)  # a single channel has no copies


def test_a_contender_that_does_not_win_changes_nothing(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn", 3)
    run = hs.fit(model, tiny_data, "linear-probe", epochs=1, batch_size=8, progress=False, out=tmp_path / "r")
    before = (tmp_path / "r" / "best" / "model.safetensors").read_bytes()
    contender = raw_input_contender(model, tiny_data, TRAIN)
    run.best_metrics["val/accuracy"] = contender.cv_score  # a tie keeps the trained model
    record = settle(contender, run, tiny_data)
    assert not record["shipped"] and "contender" not in run.extra
    assert (tmp_path / "r" / "best" / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "r" / TRANSFER_DIR).exists()


def test_auto_ships_ridge_on_pixels_where_the_target_is_linear_in_them(shifted_target_data, tmp_path):
    model = hs.create_model("toy:cnn", 1, task="regression")
    run = hs.fit(model, shifted_target_data, "auto", epochs=1, batch_size=16, progress=False, out=tmp_path / "r")
    decision = json.loads((tmp_path / "r" / "auto.json").read_text())
    assert decision["contender"]["shipped"] and "transfer did not help" in decision["reasons"][-1]
    record = decision["contender"]
    assert record["cv_score"] < record["trained_val_score"] and record["folds"] == 5  # val/mse
    assert run.test_metrics["test/mse"] < 1e-3  # the target is a linear function of the pixels
    assert load_model(tmp_path / "r" / "best").spec.source.startswith("pixels:")
    trained = (tmp_path / "r" / TRANSFER_DIR / "best" / "model.safetensors").read_bytes()
    # resuming the finished run judges again from the model it trained, and loses neither model
    again = hs.fit(hs.create_model("toy:cnn", 1, task="regression"), shifted_target_data, "auto", epochs=1,
                   batch_size=16, progress=False, out=tmp_path / "r", resume=True)
    assert again.test_metrics == run.test_metrics
    assert (tmp_path / "r" / TRANSFER_DIR / "best" / "model.safetensors").read_bytes() == trained
    assert load_model(tmp_path / "r" / "best").spec.source.startswith("pixels:")


def test_auto_on_a_custom_module_has_no_contender(tiny_data, tmp_path):
    # its bundle loads with the user's module (hs.load(path, module=...)): a pixels bundle in its place would not
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    hs.fit(hs.create_model(net, 3), tiny_data, "auto", epochs=1, batch_size=8, progress=False, out=tmp_path / "r")
    assert json.loads((tmp_path / "r" / "auto.json").read_text())["contender"] is None


def test_the_contender_must_lead_by_the_standard_error_of_its_cross_validated_score():
    from headstart.plan.contender import contender_wins

    # Fashion-MNIST, 1,000 training images: pixels cross-validated 0.797 against partial's 0.792 on 120 val
    # images; partial scored 0.863 on test and the pixels 0.798, so a lead within the noise keeps the trained model
    assert not contender_wins(0.792, 0.797, "val/accuracy", 1000)[0]
    # blurred clothing, 500 training images: 0.762 against 0.6875 on val; the pixels were 8 points up on test
    wins, margin = contender_wins(0.6875, 0.762, "val/accuracy", 500)
    assert wins and margin == pytest.approx((0.762 * 0.238 / 500) ** 0.5)
    assert contender_wins(0.021, 0.011, "val/mse", 145)[0] and not contender_wins(0.021, 0.02, "val/mse", 145)[0]


def test_folds_spread_every_class_evenly_and_leave_the_run_random_stream_alone():
    from headstart.linear_fit import fold_of

    targets = torch.tensor([0] * 23 + [1] * 7 + [2] * 3)
    state = torch.random.get_rng_state()
    fold = fold_of(targets, "classification", 5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(fold, fold_of(targets, "classification", 5))  # the same folds every time
    for c in range(3):
        counts = torch.bincount(fold[targets == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert set(torch.bincount(fold, minlength=5).tolist()) <= {6, 7}  # small classes do not pile into fold 0
    assert torch.bincount(fold_of(torch.randn(12), "regression", 5)).tolist() == [3, 3, 2, 2, 2]


def test_out_of_fold_outputs_come_from_fits_that_never_saw_the_sample():
    from headstart.linear_fit import out_of_fold

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 200, generator=g)  # more features than samples: any labels can be fitted exactly
    noise = torch.randint(0, 3, (60,), generator=g)
    accuracy = lambda out, y: float((out.argmax(1) == y).float().mean())  # noqa: E731
    weight, bias, l2, _ = fit_linear(x, noise, x, "classification", 3, lambda out: accuracy(out, noise))
    assert accuracy(x @ weight.T + bias, noise) == 1.0  # in-sample: memorised
    assert accuracy(out_of_fold(x, noise, "classification", 3, l2, weight, bias), noise) < 0.6  # chance is 1/3
    # where the labels follow the features, the held-out fits find that too
    x = x + 0.5 * torch.randn(3, 200, generator=g)[noise]  # each class shifted along its own direction
    weight, bias, l2, _ = fit_linear(x, noise, x, "classification", 3, lambda out: accuracy(out, noise))
    assert accuracy(out_of_fold(x, noise, "classification", 3, l2, weight, bias), noise) > 0.9
