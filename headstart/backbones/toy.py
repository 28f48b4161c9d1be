"""`toy:<name>`: tiny models with random weights, for tests and quick experiments."""
from __future__ import annotations

import fnmatch

import torch.nn as nn

from ..registry import unknown_name
from .sources import SOURCES
from .spec import BackboneSpec, ImagePreprocessing, groups_from_children
from .weights import load_into, resolve_weights
from .wrapper import FeatureBackbone, prefixed


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def toy_cnn(width: int = 8) -> nn.Module:
    """Three conv-BN stages and a global pool: the smallest net with the structure of a real CNN."""
    net = nn.Sequential()
    net.add_module("stem", _conv_bn(3, width, 2))
    net.add_module("stage1", _conv_bn(width, width * 2, 2))
    net.add_module("stage2", _conv_bn(width * 2, width * 4, 2))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    return net


def toy_mlp(width: int = 32) -> nn.Module:
    """Flatten a 3x16x16 image and two Linear+ReLU layers: a backbone without BatchNorm."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())


TOYS = {"cnn": (toy_cnn, 32, 8 * 4), "mlp": (toy_mlp, 16, 32)}


@SOURCES.register("toy", help="tiny random models for tests: toy:cnn (conv+BN), toy:mlp")
def build_toy(name: str, weights: str | None = None, **kwargs) -> tuple[FeatureBackbone, BackboneSpec]:
    if name not in TOYS:
        raise unknown_name("toy model", name, sorted(TOYS))
    make, size, num_features = TOYS[name]
    net = make()
    loaded = resolve_weights(weights)
    if loaded is not None:
        load_into(net, loaded.state_dict, loaded.source)
    pre = ImagePreprocessing(input_size=(3, size, size), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                             interpolation="bilinear", crop_pct=1.0)
    spec = BackboneSpec(source=f"toy:{name}", modality="image", num_features=num_features, preprocessing=pre,
                        layer_groups=prefixed(groups_from_children(net, split_sequential_at=())),
                        weights=loaded.source if loaded else None,
                        weights_id=loaded.weights_id if loaded else None)
    return FeatureBackbone(net), spec


build_toy.list_models = lambda pattern="*": [n for n in TOYS if fnmatch.fnmatch(n, pattern)]  # type: ignore
