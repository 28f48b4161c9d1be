"""Backbone sources. Each is registered under a prefix and returns (FeatureBackbone, BackboneSpec).

    create_backbone("timm:resnet50")                                  # random weights
    create_backbone("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0")
    create_backbone("torchvision:vgg16", weights="hub")             # online users
    create_backbone("timm:resnet50", weights="/models/resnet50.safetensors")
    create_backbone("hf:sentence-transformers/all-MiniLM-L6-v2", pooling="mean", max_length=128)  # text
"""
from __future__ import annotations

# Importing the modules registers their sources.
from . import custom, hf_source, pixels, timm_source, torchvision_source, toy  # noqa: F401
from .sources import SOURCES, create_backbone, list_backbones, split_name
from .spec import BackboneSpec, ImagePreprocessing, LayerGroup, TextPreprocessing
from .wrapper import FeatureBackbone

__all__ = ["BackboneSpec", "FeatureBackbone", "ImagePreprocessing", "LayerGroup", "SOURCES",
           "TextPreprocessing", "create_backbone", "list_backbones", "split_name"]
