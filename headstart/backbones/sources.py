"""The registry of backbone sources and the name-based entry points over it (the sources register here)."""
from __future__ import annotations

from typing import Callable

from ..errors import HeadstartError
from ..registry import Registry
from .spec import BackboneSpec
from .weights import packaged_weights_for
from .wrapper import FeatureBackbone

SourceFn = Callable[..., tuple[FeatureBackbone, BackboneSpec]]
SOURCES: Registry[SourceFn] = Registry("backbone source")


def split_name(name: str) -> tuple[str, str]:
    """'timm:resnet50' -> ('timm', 'resnet50'); a bare name means timm, as timm users expect."""
    source, sep, rest = name.partition(":")
    if not sep:
        return "timm", name
    if source not in SOURCES:
        raise HeadstartError(SOURCES.unknown_message(source) + f" Backbone names look like "
                             f"'<source>:<model>', e.g. 'timm:resnet50'; received {name!r}.")
    return source, rest


def pretrained_weights(name: str) -> str | None:
    """What ``weights="auto"`` means for a backbone: its installed package's weights when one is made for it,
    else the hub's pretrained weights (timm, torchvision; an hf: name already points to its weights), else
    random (toy models have none)."""
    source, _ = split_name(name)
    full = name if ":" in name else f"timm:{name}"
    return packaged_weights_for(full) or ("hub" if source in ("timm", "torchvision") else None)


def create_backbone(name: str, weights: str | None = None, **kwargs) -> tuple[FeatureBackbone, BackboneSpec]:
    """Build a backbone by registered name, optionally loading weights (see `weights.resolve_weights`);
    ``weights="auto"`` loads its pretrained weights (`pretrained_weights`)."""
    source, model_name = split_name(name)
    if weights == "auto":
        weights = pretrained_weights(name)
    return SOURCES.get(source)(model_name, weights=weights, **kwargs)


def list_backbones(pattern: str = "*") -> list[str]:
    """Backbone names matching a wildcard pattern like ``timm:resnet*`` (a bare pattern searches every source)."""
    import fnmatch

    source_pat, _, model_pat = pattern.rpartition(":")
    names: list[str] = []
    for source in SOURCES:
        lister = getattr(SOURCES.get(source), "list_models", None)
        if lister and fnmatch.fnmatch(source, source_pat or "*"):
            names += [f"{source}:{m}" for m in lister(model_pat)]
    return names
