"""`timm:<name>`: any timm architecture; layer groups from timm's own coarse group matcher."""
from __future__ import annotations

import fnmatch
import os

import torch.nn as nn

from ..errors import HeadstartError
from ..registry import unknown_name
from .sources import SOURCES
from .spec import BackboneSpec, ImagePreprocessing, LayerGroup, groups_from_children
from .weights import load_into, resolve_weights
from .wrapper import FeatureBackbone, prefixed


def timm_layer_groups(net: nn.Module) -> list[LayerGroup]:
    """Coarse groups (stem, each stage, head) from timm's matcher, named by their common prefix."""
    from timm.models import group_parameters

    matcher = getattr(net, "group_matcher", None)
    if matcher is None:
        return groups_from_children(net)
    try:
        grouped = group_parameters(net, matcher(coarse=True))
    except NotImplementedError:
        return groups_from_children(net)
    groups = []
    for _, names in sorted(grouped.items()):
        prefix = os.path.commonprefix([n.split(".") for n in names])
        label = ".".join(prefix) if prefix else "+".join(dict.fromkeys(
            ".".join(n.split(".")[:-1][:2]) or n for n in names))
        groups.append(LayerGroup(label, tuple(names)))
    return groups


def preprocessing_from_cfg(cfg: dict) -> ImagePreprocessing:
    return ImagePreprocessing(input_size=tuple(cfg["input_size"]), mean=tuple(cfg["mean"]),
                              std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bilinear"),
                              crop_pct=float(cfg.get("crop_pct", 0.875)))


@SOURCES.register("timm", help="any timm model, e.g. timm:resnet50, timm:vit_tiny_patch16_224")
def build_timm(name: str, weights: str | None = None, **kwargs) -> tuple[FeatureBackbone, BackboneSpec]:
    import timm

    if not timm.is_model(name) and not name.startswith("hf-hub:"):
        raise unknown_name("timm model", name, timm.list_models(),
                           hint=f" List them with `headstart list backbones 'timm:*{name[:4]}*'`.")
    loaded = resolve_weights(weights)
    if loaded is not None and loaded.architecture and loaded.architecture != f"timm:{name}":
        raise HeadstartError(f"weights {loaded.source!r} are for {loaded.architecture}, not timm:{name}. "
                             f"Use backbone '{loaded.architecture}'.")
    try:
        net = timm.create_model(name, pretrained=weights == "hub", num_classes=0, **kwargs)
    except Exception as e:
        if weights == "hub":
            raise HeadstartError(f"could not fetch hub weights for timm:{name} ({type(e).__name__}: {e}). "
                                 "Offline? Pass a local file (weights='path/model.safetensors') or an "
                                 "installed package (weights='package:...').") from None
        raise
    cfg = dict(net.pretrained_cfg)
    if loaded is not None:
        classifier = cfg.get("classifier") or "classifier"
        load_into(net, loaded.state_dict, loaded.source, ignore_prefixes=(classifier + ".", "fc.", "head."))
        cfg.update(loaded.preprocessing)
    spec = BackboneSpec(
        source=f"timm:{name}", modality="image",
        # head_hidden_size: the pooled width with num_classes=0 (VGG's pre-logits MLP makes it differ from num_features)
        num_features=getattr(net, "head_hidden_size", None) or net.num_features,
        preprocessing=preprocessing_from_cfg(cfg), layer_groups=prefixed(timm_layer_groups(net)),
        weights=(loaded.source if loaded else ("hub" if weights == "hub" else None)),
        weights_id=(loaded.weights_id if loaded else (cfg.get("hf_hub_id") if weights == "hub" else None)))
    return FeatureBackbone(net), spec


def list_models(pattern: str = "*") -> list[str]:
    import timm

    return [m for m in timm.list_models() if fnmatch.fnmatch(m, pattern)]


build_timm.list_models = list_models  # type: ignore[attr-defined]
