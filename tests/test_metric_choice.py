"""The metric the user cares about (issue 15): train.metric picks the best epoch, f1 scores a positive class,
imbalanced classes get a weighted loss by default, and every wrong choice is a clear message."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import headstart as hs
from conftest import separable_images
from headstart.data import from_arrays
from headstart.errors import ConfigError
from headstart.metrics import auroc, balanced_accuracy, class_f1
from headstart.objectives import LossSettings, task_loss

FAST = dict(progress=False, batch_size=8, eval_batch_size=32, precision="fp32", lr=0.01)


def imbalanced(n_major=40, n_minor=6, seed=0):
    x, y = separable_images(n_major, classes=2, seed=seed)
    keep = np.concatenate([np.arange(n_major), n_major + np.arange(n_minor)])
    xt, yt = separable_images(5, classes=2, seed=seed + 1)
    return from_arrays(x[keep], y[keep], classes=["common", "rare"], val_fraction=0.3, seed=0, x_test=xt, y_test=yt,
                       name="imb")


def test_metrics_match_their_definitions():
    sk = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(60, 3, generator=g), torch.randint(0, 3, (60,), generator=g)
    pred = logits.argmax(1).numpy()
    assert balanced_accuracy(logits, y) == pytest.approx(sk.balanced_accuracy_score(y.numpy(), pred))
    probs = logits.softmax(1).numpy()
    assert auroc(logits, y) == pytest.approx(sk.roc_auc_score(y.numpy(), probs, multi_class="ovr"))
    yb = torch.randint(0, 2, (60,), generator=g)
    lb = torch.randn(60, 2, generator=g)
    assert auroc(lb, yb) == pytest.approx(sk.roc_auc_score(yb.numpy(), lb.softmax(1)[:, 1].numpy()))
    assert class_f1(0)(lb, yb) == pytest.approx(sk.f1_score(yb.numpy(), lb.argmax(1).numpy(), pos_label=0))


def test_imbalanced_classes_get_a_balanced_loss_by_default():
    rare = torch.tensor([0] * 40 + [1] * 6)
    assert task_loss("classification", rare, 2).class_weights is not None
    assert task_loss("classification", torch.tensor([0] * 20 + [1] * 18), 2).class_weights is None
    assert task_loss("classification", rare, 2, LossSettings(class_weights="none")).class_weights is None


def test_f1_picks_the_best_epoch_and_scores_the_rarer_class(tmp_path, capsys):
    data = imbalanced()
    run = hs.fit(hs.create_model("toy:cnn", 2), data, "full", epochs=2, metric="f1", out=tmp_path / "r",
                 **{**FAST, "progress": True})
    header = capsys.readouterr().out
    assert "best epoch by val/f1" in header and "class-balanced weights" in header
    assert "val/f1" in run.history[0] and "test/f1" in run.test_metrics
    assert run.history[run.best_epoch - 1]["val/f1"] == max(r["val/f1"] for r in run.history)  # ties: lower loss


@pytest.mark.parametrize("options, message", [
    (dict(metric="f1"), r"f1 scores one class, and this task has 3: name it with train.positive_class"),
    (dict(metric="f1", positive_class="z"), r"positive_class 'z' is not a class of the data"),
    (dict(metric="precision"), r"train.metric"),
])
def test_wrong_metric_choices_are_clear_errors(tiny_data, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, out=tmp_path / "r", **FAST, **options)


def test_the_threshold_is_chosen_on_val_saved_reloaded_and_applied_by_predict(tmp_path):
    from headstart.data import make_batcher
    from headstart.metrics import best_threshold
    from headstart.runtime import predict_outputs

    data = imbalanced()
    hs.fit(hs.create_model("toy:cnn", 2), data, "full", epochs=2, metric="f1", out=tmp_path / "r", **FAST)
    clf = hs.load(tmp_path / "r")
    decision = clf.model.decision
    assert decision["positive"] == 1  # the rarer class
    val_out = predict_outputs(clf.model, make_batcher(data.val, clf.model.spec, train=False))
    assert decision["threshold"] == pytest.approx(best_threshold(val_out, data.val.targets, 1))
    images = data.val.images.permute(0, 2, 3, 1).numpy()
    probs = clf.predict_proba(images)
    labels = [label for label, _ in clf.predict(images)]
    assert labels == ["rare" if p[1] >= decision["threshold"] else "common" for p in probs]
    assert "test/f1" in clf.evaluate(data)
