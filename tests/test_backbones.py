"""Every backbone source builds, yields (N, num_features), and its layer groups cover each parameter once."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import headstart as hs
from headstart.backbones import SOURCES, create_backbone
from headstart.errors import BundleError, HeadstartError

# One small example per registered source; a new source without an example fails test_every_source_has_example.
EXAMPLES = {
    "toy": ["toy:cnn", "toy:mlp"],
    "timm": ["timm:test_efficientnet", "timm:test_vit", "timm:resnet18"],
    "torchvision": ["torchvision:mobilenet_v3_small", "torchvision:resnet18"],
    "hf": [],  # needs a model directory: tests/test_text.py builds a tiny BERT and checks the same contract
    "pixels": [],  # no parameters, so no layer groups: tests/test_contender.py checks its features
}
ALL_EXAMPLES = [n for names in EXAMPLES.values() for n in names]


def test_every_source_has_example():
    assert set(SOURCES) == set(EXAMPLES)


def check_layer_groups(backbone: nn.Module, spec) -> None:
    grouped = [p for g in spec.layer_groups for p in g.params]
    assert len(grouped) == len(set(grouped)), "a parameter is in two layer groups"
    assert set(grouped) == {n for n, _ in backbone.named_parameters()}, "layer groups miss parameters"
    assert all(g.params for g in spec.layer_groups)


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_source_builds_and_yields_features(name):
    backbone, spec = create_backbone(name)
    backbone.eval()
    x = torch.randn(2, *spec.preprocessing.input_size)
    with torch.no_grad():
        feats = backbone.forward_features(x)
    assert feats.shape == (2, spec.num_features)
    assert spec.source == name and spec.modality == "image"
    check_layer_groups(backbone, spec)
    assert len(spec.layer_groups) >= 2


@pytest.mark.parametrize("name", ["timm:resnet50", "torchvision:resnet50", "torchvision:vgg16", "timm:vgg16"])
def test_classic_backbones_take_a_new_head(name):
    model = hs.create_model(name, num_classes=7, image_size=64)
    check_layer_groups(model.backbone, model.spec)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert model.spec.num_features == {"timm:resnet50": 2048, "torchvision:resnet50": 2048,
                                       "torchvision:vgg16": 4096, "timm:vgg16": 4096}[name]


def test_custom_module_backbone():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3))
    net.register_parameter("scale", nn.Parameter(torch.ones(1)))  # a parameter the module holds itself
    model = hs.create_model(net, 3, preprocessing=hs.ImagePreprocessing(input_size=(3, 20, 20)))
    assert model.spec.num_features == 6  # spatial output is average-pooled
    check_layer_groups(model.backbone, model.spec)
    assert model(torch.randn(2, 3, 20, 20)).shape == (2, 3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_round_trip(tmp_path, suffix):
    src, spec = create_backbone("toy:cnn")
    path = tmp_path / f"w{suffix}"
    state = src.net.state_dict()
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)  # a common checkpoint wrapper
    dst, dspec = create_backbone("toy:cnn", weights=str(path))
    x = torch.randn(3, 3, 32, 32)
    src.eval(), dst.eval()
    assert torch.equal(src(x), dst(x))
    assert dspec.weights == str(path) and dspec.weights_id.startswith("sha256:")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": nn.Linear(2, 2)}, path)  # a whole module: loading it would unpickle code
    with pytest.raises(BundleError, match="unpickle"):
        create_backbone("toy:cnn", weights=str(path))


def test_weights_for_another_architecture_are_explained(tmp_path):
    from safetensors.torch import save_file

    other, _ = create_backbone("toy:mlp")
    path = tmp_path / "mlp.safetensors"
    save_file(other.net.state_dict(), str(path))
    with pytest.raises(HeadstartError, match="do not fit this backbone"):
        create_backbone("toy:cnn", weights=str(path))


def test_missing_weights_file():
    with pytest.raises(HeadstartError, match="does not exist"):
        create_backbone("toy:cnn", weights="/nonexistent/w.safetensors")


@pytest.mark.parametrize("name, close", [("timm:resnet5", "resnet50"), ("timn:resnet50", "timm"),
                                         ("torchvision:vgg61", "vgg16"), ("toy:cnm", "cnn")])
def test_unknown_backbone_lists_close_matches(name, close):
    with pytest.raises(HeadstartError) as err:
        create_backbone(name)
    assert "Did you mean" in str(err.value) and close in str(err.value)


@pytest.mark.real
def test_package_weights_efficientnet_lite0():
    backbone, spec = create_backbone("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0")
    random_bb, _ = create_backbone("timm:tf_efficientnet_lite0")
    assert spec.weights == "package:efficientnet-lite0" and spec.weights_id.startswith("sha256:")
    assert spec.preprocessing.mean == (0.5, 0.5, 0.5) and spec.preprocessing.interpolation == "bicubic"
    a = dict(backbone.named_parameters())["net.conv_stem.weight"]
    b = dict(random_bb.named_parameters())["net.conv_stem.weight"]
    assert not torch.equal(a, b)
    with pytest.raises(HeadstartError, match="are for timm:tf_efficientnet_lite0"):
        create_backbone("timm:tf_efficientnet_lite1", weights="package:efficientnet-lite0")
