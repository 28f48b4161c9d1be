"""Domain adaptation: the gradient reversal layer, the alignment losses, the adversarial terms and their runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import headstart as hs
from conftest import differing_weights, killed_and_resumed, separable_images, without_timings
from headstart.data import from_arrays, with_target
from headstart.errors import ConfigError, DataError
from headstart.objectives.domain import (DOMAIN_TERMS, DANN, class_confusion, coral, mmd, ramp, reverse_gradient)

FAST = dict(progress=False, batch_size=8, precision="fp32", lr=0.01)


def images(seed=0, n=16, shift=0):
    x, y = separable_images(n, seed=seed)
    x = np.clip(x.astype(int) + shift, 0, 255).astype(np.uint8)
    return from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="tiny")


def adaptation_data(shift=60):
    return with_target(images(), images(shift=shift))  # the target: the same classes, brighter


def make():
    torch.manual_seed(0)
    return hs.create_model("toy:cnn", 3)


def test_gradient_reversal_negates_and_scales_exactly():
    x = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    y = reverse_gradient(x, 0.37)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.equal(x.grad, -0.37 * upstream)
    assert ramp(0.0) == 0.0 and 0.99 < ramp(1.0) < 1.0 and ramp(0.2) < ramp(0.5)


def test_coral_and_mmd_are_zero_for_identical_batches_and_grow_with_a_shift():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    assert coral(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert mmd(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    scales = [0.0, 0.5, 1.0, 2.0]
    corals = [coral(x, x * (1 + s)).item() for s in scales]  # covariance grows with the scale
    mmds = [mmd(x, x + s).item() for s in scales]  # the mean moves away
    assert corals == sorted(corals) and corals[-1] > corals[1] > 0
    assert mmds == sorted(mmds) and mmds[-1] > mmds[1] > 0


def test_class_confusion_is_low_for_confident_distinct_predictions():
    confident = torch.eye(4).repeat(8, 1) * 20
    confused = torch.zeros(32, 4)
    assert class_confusion(confident).item() < 0.05 < class_confusion(confused).item()


def test_discriminator_stays_near_chance_on_one_distribution():
    torch.manual_seed(0)
    term = DANN(16, 3)
    term.begin_epoch(0, 1)
    opt = torch.optim.Adam(term.parameters(), lr=1e-3)
    for _ in range(100):
        source, target = torch.randn(64, 16), torch.randn(64, 16)  # the same distribution
        loss = term.domain_loss(source, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    term.discriminator.eval()
    with torch.no_grad():
        s, t = torch.randn(2000, 16), torch.randn(2000, 16)
        accuracy = ((term.discriminator(s) > 0).float().mean() + (term.discriminator(t) <= 0).float().mean()) / 2
    assert abs(accuracy.item() - 0.5) < 0.06
    shifted = DANN(16, 3)  # and it does tell two distributions apart when they differ
    shifted.begin_epoch(0, 1)
    opt = torch.optim.Adam(shifted.parameters(), lr=1e-3)
    for _ in range(100):
        loss = shifted.domain_loss(torch.randn(64, 16) + 1.0, torch.randn(64, 16))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5


def test_dann_with_weight_zero_trains_exactly_the_supervised_model(tmp_path):
    data = adaptation_data()
    plain, adapted = make(), make()
    settings = dict(epochs=2, bn="frozen", **FAST)  # BatchNorm frozen: the target pass must not move its statistics
    hs.fit(plain, data, "full", out=tmp_path / "plain", **settings)
    hs.fit(adapted, data, "full", out=tmp_path / "dann", domain="dann", domain_weight=0.0, **settings)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, adapted.state_dict()[key]), key
    row = hs.run.read_metrics(tmp_path / "dann")[-1]
    assert row["train/domain/dann"] > 0  # the discriminator did run
    assert {"target/accuracy", "target/im", "target/entropy"} <= set(row)


@pytest.mark.parametrize("method", sorted(DOMAIN_TERMS))
def test_every_method_trains_and_logs_its_term(tmp_path, method):
    run = hs.fit(make(), adaptation_data(), "full", out=tmp_path / method, epochs=2, domain=method, **FAST)
    rows = run.history
    assert all(np.isfinite(r[f"train/domain/{method}"]) for r in rows)
    assert all(0.0 <= r["target/accuracy"] <= 1.0 for r in rows)


def test_resumed_adaptation_run_equals_an_uninterrupted_one(tmp_path):
    data = adaptation_data()
    args = dict(epochs=3, domain="dann", **FAST)
    full = hs.fit(make(), data, "full", out=tmp_path / "a", **args)
    resumed = killed_and_resumed(lambda resume: hs.fit(make(), data, "full", out=tmp_path / "b", resume=resume,
                                                       **args), kill_epoch=2)
    assert without_timings(resumed.history) == without_timings(full.history)


def test_target_data_of_another_size_or_channel_count_goes_through_the_transforms(tmp_path):
    x, y = separable_images(8, size=24)
    rgb = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25)
    gray = from_arrays(x.mean(-1).astype(np.uint8), y, classes=["a", "b", "c"], val_fraction=0.25)
    for target in (rgb, gray):
        run = hs.fit(make(), with_target(images(), target), "full", out=tmp_path / f"r{target.train.images.shape[1]}",
                     epochs=1, domain="coral", **FAST)
        assert np.isfinite(run.history[0]["train/domain/coral"])


def test_bad_target_data_gets_clear_messages(tmp_path):
    source = images()
    with pytest.raises(DataError, match="target data is empty"):
        with_target(source, source.train.subset([]))
    texts = hs.data.from_texts(["a b", "c d", "e f", "g h"] * 3, ["x", "y"] * 6)
    with pytest.raises(DataError, match="holds text inputs and the source image"):
        with_target(source, texts)
    with pytest.raises(DataError, match="fewer than one batch"):
        hs.fit(make(), with_target(source, source.train.subset([0, 1, 2])), "full", out=tmp_path / "a",
               domain="dann", **FAST)
    with pytest.raises(ConfigError, match="unlabeled target data"):
        hs.fit(make(), source, "full", out=tmp_path / "b", domain="dann", **FAST)
    with pytest.raises(Exception, match="unknown domain adaptation method 'dan'"):
        hs.fit(make(), adaptation_data(), "full", out=tmp_path / "c", domain="dan", **FAST)


def test_cli_adapts_to_a_target_folder(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from headstart.cli import app

    for name, shift in (("src", 0), ("tgt", 60)):
        x, y = separable_images(10)
        x = np.clip(x.astype(int) + shift, 0, 255).astype(np.uint8)
        for i, (img, label) in enumerate(zip(x, y)):
            folder = tmp_path / name / "abc"[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i}.png")
    runner = CliRunner()
    args = ["fit", "--data", str(tmp_path / "src"), "--backbone", "toy:cnn", "--weights", "random", "--epochs", "2",
            "--set", "train.progress=false", "--set", "train.batch_size=8"]
    res = runner.invoke(app, args + ["--target-data", str(tmp_path / "tgt"), "--objective", "coral",
                                     "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    rows = hs.run.read_metrics(tmp_path / "run")
    assert all("train/domain/coral" in r and "target/accuracy" in r for r in rows)
    cfg = hs.config.load_config(tmp_path / "run" / "config.yaml")
    assert cfg.domain.method == "coral" and cfg.data.target == str(tmp_path / "tgt")
    res = runner.invoke(app, args + ["--objective", "coral", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "--target-data" in res.output
    res = runner.invoke(app, args + ["--target-data", str(tmp_path / "tgt"), "--objective", "danm",
                                     "--out", str(tmp_path / "bad2")])
    assert res.exit_code == 2 and "Did you mean 'dann'" in res.output


def test_corruption_is_fixed_and_shifts_the_pixels():
    from headstart.data.datasets import corrupt

    x = torch.from_numpy(separable_images(4)[0]).permute(0, 3, 1, 2).contiguous()
    a, b = corrupt(x, 1), corrupt(x, 1)
    assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == x.shape
    assert not torch.equal(a, corrupt(x, 2))  # the noise follows the seed
    assert (a.float() - 127.5).abs().mean() < (x.float() - 127.5).abs().mean()  # contrast halved


@pytest.mark.real
def test_corrupted_fashion_mnist_keeps_the_images_order_and_labels():
    clean = hs.datasets.load("fashion-mnist", subset=5, test_subset=5)
    shifted = hs.datasets.load("fashion-mnist-corrupted", subset=5, test_subset=5)
    again = hs.datasets.load("fashion-mnist-corrupted", subset=5, test_subset=5)
    assert torch.equal(shifted.train.targets, clean.train.targets) and torch.equal(shifted.test.images,
                                                                                    again.test.images)
    assert shifted.train.images.float().std() < 0.7 * clean.train.images.float().std()


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
import headstart as hs
from test_domain import adaptation_data, make, FAST
data = adaptation_data()
for method in ("dann", "mcc"):
    model = make()
    run = hs.fit(model, data, "full", out={out!r} + "/" + method, epochs=2, domain=method, **FAST)
    torch.save({{"model": model.state_dict(), "history": run.history}},
               {out!r} + "/" + method + "-rank" + os.environ["RANK"] + ".pt")
"""


def test_adaptation_under_ddp_keeps_every_rank_in_sync(tmp_path):
    # The target batch runs through the model outside DDP's wrapper: its gradient joins the source's in each
    # parameter's one accumulation, which DDP then reduces; the discriminator's gradients the loop averages.
    from conftest import run_two_processes

    run_two_processes(DDP_SCRIPT, tmp_path)
    for method in ("dann", "mcc"):
        a, b = (torch.load(tmp_path / f"{method}-rank{r}.pt") for r in (0, 1))
        assert differing_weights(a["model"], b["model"]) == [], method
        assert a["history"] == b["history"]
