"""`torchvision:<name>`: torchvision classification models with their final Linear removed."""
from __future__ import annotations

import fnmatch

import torch.nn as nn

from ..errors import HeadstartError
from ..registry import unknown_name
from .sources import SOURCES
from .spec import BackboneSpec, ImagePreprocessing, groups_from_children
from .weights import load_into, resolve_weights
from .wrapper import FeatureBackbone, prefixed


def strip_classifier(net: nn.Module) -> tuple[str, int]:
    """Replace the last nn.Linear (the ImageNet classifier) with Identity; return its name and in_features."""
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise HeadstartError("this torchvision model has no Linear classifier to replace; use it through "
                             "hs.create_model(module) instead.")
    name, linear = last
    net.set_submodule(name, nn.Identity())
    return name, linear.in_features


def preprocessing_for(name: str) -> ImagePreprocessing:
    """Read the default weights' transform settings (no download: the enum holds them)."""
    import torchvision

    try:
        tf = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError):
        return ImagePreprocessing()
    crop = tf.crop_size[0]
    resize = tf.resize_size[0] if tf.resize_size else crop
    return ImagePreprocessing(input_size=(3, crop, crop), mean=tuple(tf.mean), std=tuple(tf.std),
                              interpolation=tf.interpolation.value, crop_pct=crop / resize)


@SOURCES.register("torchvision", help="torchvision classification models, e.g. torchvision:resnet50, :vgg16")
def build_torchvision(name: str, weights: str | None = None, **kwargs) -> tuple[FeatureBackbone, BackboneSpec]:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise unknown_name("torchvision model", name, available)
    loaded = resolve_weights(weights)
    try:
        net = torchvision.models.get_model(name, weights="DEFAULT" if weights == "hub" else None, **kwargs)
    except Exception as e:
        if weights == "hub":
            raise HeadstartError(f"could not fetch hub weights for torchvision:{name} ({type(e).__name__}). "
                                 "Offline? Pass weights='path/to/file.safetensors' instead.") from None
        raise
    classifier, num_features = strip_classifier(net)
    if loaded is not None:
        load_into(net, loaded.state_dict, loaded.source, ignore_prefixes=(classifier + ".",))
    pre = preprocessing_for(name)
    spec = BackboneSpec(
        source=f"torchvision:{name}", modality="image", num_features=num_features, preprocessing=pre,
        layer_groups=prefixed(groups_from_children(net)),
        weights=(loaded.source if loaded else ("hub" if weights == "hub" else None)),
        weights_id=(loaded.weights_id if loaded else None))
    return FeatureBackbone(net), spec


def list_models(pattern: str = "*") -> list[str]:
    import torchvision

    return [m for m in torchvision.models.list_models(module=torchvision.models) if fnmatch.fnmatch(m, pattern)]


build_torchvision.list_models = list_models  # type: ignore[attr-defined]
