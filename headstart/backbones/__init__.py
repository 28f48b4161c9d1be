"""Backbone sources. Each is registered under a prefix and returns (FeatureBackbone, BackboneSpec).

    create_backbone("timm:resnet50")                                  # random weights
    create_backbone("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0")
    create_backbone("torchvision:vgg16", weights="hub")             # online users
    create_backbone("timm:resnet50", weights="/models/resnet50.safetensors")
    create_backbone("hf:sentence-transformers/all-MiniLM-L6-v2", pooling="mean", max_length=128)  # text
"""
from __future__ import annotations

from typing import Callable

from ..errors import HeadstartError
from ..registry import Registry
from .spec import BackboneSpec, ImagePreprocessing, LayerGroup, TextPreprocessing
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


def create_backbone(name: str, weights: str | None = None, **kwargs) -> tuple[FeatureBackbone, BackboneSpec]:
    """Build a backbone by registered name, optionally loading weights (see `weights.resolve_weights`)."""
    source, model_name = split_name(name)
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


# Importing the modules registers their sources.
from . import custom, hf_source, timm_source, torchvision_source, toy  # noqa: E402,F401

__all__ = ["BackboneSpec", "FeatureBackbone", "ImagePreprocessing", "LayerGroup", "SOURCES",
           "TextPreprocessing", "create_backbone", "list_backbones", "split_name"]
