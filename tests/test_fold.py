"""Folding eval-mode BatchNorm into convolutions for frozen extraction: same function, fewer modules, safe."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import headstart as hs
from headstart.data import make_batcher
from headstart.features import extract_features
from headstart.fold import fold_for_inference, inference_module


def _randomise_statistics(module: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.2)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.num_features, generator=g))
                m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def _count(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_folded_toy_cnn_matches_and_leaves_the_original_untouched():
    model = hs.create_model("toy:cnn", 3)
    _randomise_statistics(model.backbone)
    model.backbone.train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    x = torch.randn(4, 3, 16, 16)
    folded, n = fold_for_inference(model.backbone, lambda m: m.forward_features(x))
    assert n["batchnorm"] == _count(model.backbone, nn.BatchNorm2d) > 0
    assert _count(folded, nn.BatchNorm2d) == 0
    assert model.backbone.training  # the caller's mode is restored
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    with torch.no_grad():
        reference = model.backbone.eval().forward_features(x)
        torch.testing.assert_close(folded.forward_features(x), reference, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in folded.parameters())


@pytest.mark.parametrize("size", [64, 65])  # even sizes pad asymmetrically at stride 2, odd ones symmetrically
def test_timm_batchnorm_act_and_same_padding_fold(size):
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    _randomise_statistics(net)
    x = torch.randn(2, 3, size, size)
    folded, n = fold_for_inference(net, lambda m: m(x))
    assert n["batchnorm"] == _count(net, nn.BatchNorm2d)  # every norm in Lite0 follows a convolution
    same = [m for m in net.modules() if type(m).__name__ == "Conv2dSame"]
    assert n["padding"] == len(same) > 0
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-3, atol=1e-4)
        other = torch.randn(2, 3, 48, 48)  # another input size: the padded convolutions fall back to explicit padding
        torch.testing.assert_close(folded(other), net(other), rtol=1e-3, atol=1e-4)


def _lite0_with_statistics():
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    _randomise_statistics(net)
    return net


def _relu6_norms(net: nn.Module) -> int:
    return sum(type(m).__name__ == "BatchNormAct2d" and isinstance(m.act, nn.ReLU6) for m in net.modules())


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN post-ops need an mkldnn build")
def test_activations_fuse_into_their_convolutions_in_fp32_and_bf16(monkeypatch):
    import headstart.fold as fold

    net = _lite0_with_statistics()
    x = torch.randn(2, 3, 64, 64)
    folded, n = fold_for_inference(net, lambda m: m(x))
    assert n["activation"] == _relu6_norms(net) > 0  # every ReLU6 of Lite0 sits in a norm after a convolution
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-3, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused = folded(x).float()
    # Without the op the same folds run the activation separately: bf16 results must agree with the fused ones
    # (against the fp32 original, bf16 on random statistics is off by whole units either way).
    monkeypatch.setattr(fold, "_FUSED_OP", None)
    unfused, n = fold_for_inference(net, lambda m: m(x))
    assert n["activation"] == 0 and n["batchnorm"] > 0
    with torch.no_grad():
        torch.testing.assert_close(unfused(x), net(x), rtol=1e-3, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(fused, unfused(x).float(), rtol=1e-2, atol=1e-2)


class _ResidualBeforeNorm(nn.Module):
    """The convolution's output also feeds a residual sum: folding the norm would change that sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_fold_that_changes_the_function_is_refused():
    net = _ResidualBeforeNorm().eval()
    _randomise_statistics(net)
    x = torch.randn(2, 3, 8, 8)
    folded, n = fold_for_inference(net, lambda m: m(x))
    assert folded is net and n == {"batchnorm": 0, "padding": 0, "activation": 0}


def test_nothing_to_fold_returns_the_module_without_running_it():
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.LayerNorm(8))
    calls = []
    folded, n = fold_for_inference(net, lambda m: calls.append(1))
    assert folded is net and calls == [] and not any(n.values())


def test_extraction_on_the_folded_backbone_equals_the_plain_forward(tiny_data):
    model = hs.create_model("toy:cnn", 3)
    _randomise_statistics(model.backbone)
    batcher = make_batcher(tiny_data.train, model.spec, train=False)
    feats = extract_features(model.backbone, batcher, batch_size=5)
    with torch.no_grad():
        direct = model.backbone.eval().forward_features(batcher.inputs(torch.arange(len(tiny_data.train))))
    torch.testing.assert_close(feats, direct, rtol=1e-4, atol=1e-5)


def test_the_inference_copy_is_reused_until_the_weights_change():
    model = hs.create_model("toy:cnn", 3)
    _randomise_statistics(model.backbone)
    x = torch.randn(4, 3, 16, 16)
    run = lambda m: m.forward_features(x)  # noqa: E731
    first = inference_module(model.backbone, run)
    assert first is not model.backbone and inference_module(model.backbone, run) is first
    opt = torch.optim.SGD(model.backbone.parameters(), lr=0.1)
    model.backbone.train()
    model.backbone.forward_features(x).sum().backward()
    opt.step()  # new weights and, in train mode, new running statistics
    fresh = inference_module(model.backbone, run)
    assert fresh is not first
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_features(x), model.backbone.eval().forward_features(x),
                                   rtol=1e-4, atol=1e-5)
