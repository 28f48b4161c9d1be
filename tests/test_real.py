"""Real pretrained weights on real data, sized to run in CI on 2 cores (marker: real)."""
from __future__ import annotations

import re

import pytest
import torch
from typer.testing import CliRunner

import headstart as hs
from headstart.cli import app

pytestmark = pytest.mark.real


def test_linear_probe_on_fashion_mnist_with_imagenet_weights(tmp_path):
    data = hs.datasets.load("fashion-mnist", subset=30, test_subset=30)
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0", image_size=112)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    run = hs.fit(model, data, "linear-probe", epochs=3, lr=3e-3, batch_size=32, progress=False, out=tmp_path / "r")
    # ImageNet features separate Fashion-MNIST far above chance (0.1) even from 30 images per class.
    assert run.test_metrics["test/accuracy"] > 0.6
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_demo_end_to_end(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--subset", "10", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    acc = float(re.search(r"test accuracy ([0-9.]+)", res.output).group(1))
    assert 0.0 <= acc <= 1.0
    command = re.search(r"predict with it: headstart (predict .*)", res.output).group(1).split()
    res = runner.invoke(app, command[:3])  # predict RUN SAMPLES, printed to stdout
    assert res.exit_code == 0, res.output
    assert len(res.output.strip().splitlines()) == 8
