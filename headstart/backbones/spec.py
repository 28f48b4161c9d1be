"""BackboneSpec: everything a backbone carries besides its weights.

Transforms, freezing, layer decay, caching and export read only this contract, never a model's
attribute names (see DESIGN.md, "Contracts").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch.nn as nn


@dataclass(frozen=True)
class ImagePreprocessing:
    """How images must look when they reach the backbone, taken from the weights' own config."""

    input_size: tuple[int, int, int] = (3, 224, 224)  # (C, H, W)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest
    crop_pct: float = 0.875  # eval: resize to size / crop_pct, then centre-crop to size

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[2]

    def with_size(self, size: int) -> "ImagePreprocessing":
        return ImagePreprocessing((self.input_size[0], size, size), self.mean, self.std,
                                  self.interpolation, self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "image", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImagePreprocessing":
        d = {k: v for k, v in d.items() if k != "kind"}
        return cls(input_size=tuple(d["input_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   interpolation=d["interpolation"], crop_pct=float(d["crop_pct"]))


@dataclass(frozen=True)
class TextPreprocessing:
    """How texts become token ids for a text backbone: the tokenizer, the length cut and the pooling.

    `tokenizer` is where the tokenizer loads from (a folder, or a hub id for online users); `vocab_size` is
    the number of rows of the model's token-embedding table, so token ids from any tokenizer can be checked
    against it before they index past the table.
    """

    tokenizer: str
    max_length: int = 128
    pooling: str = "mean"  # cls | mean | max | pooler (see backbones/hf_source.py POOLINGS)
    vocab_size: int | None = None
    normalize: bool = False  # the pooled embedding's direction (sentence-transformers' Normalize), at norm sqrt(F)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextPreprocessing":
        vocab = d.get("vocab_size")
        return cls(tokenizer=str(d["tokenizer"]), max_length=int(d["max_length"]), pooling=str(d["pooling"]),
                   vocab_size=None if vocab is None else int(vocab), normalize=bool(d.get("normalize", False)))


def preprocessing_from_dict(d: dict[str, Any] | None) -> "ImagePreprocessing | TextPreprocessing | None":
    """Rebuild a preprocessing record from its `to_dict()` form (dispatching on its ``kind``)."""
    if not d:
        return None
    return TextPreprocessing.from_dict(d) if d.get("kind") == "text" else ImagePreprocessing.from_dict(d)


CUSTOM_PREFIX = "module:"  # the source of a backbone wrapped from a user's own nn.Module


@dataclass(frozen=True)
class LayerGroup:
    """A named, ordered slice of the backbone's parameters (names relative to the backbone)."""

    name: str
    params: tuple[str, ...]


@dataclass
class BackboneSpec:
    """What a backbone is: modality, feature size, preprocessing, layer groups and weights identity.

    `layer_groups` run from input to output and cover every backbone parameter exactly once.
    `source` is the registry name that rebuilds the architecture (e.g. ``timm:resnet50``);
    `weights` says where the weights came from and `weights_id` pins their content (sha256 prefix).
    """

    source: str
    modality: str
    num_features: int
    preprocessing: ImagePreprocessing | TextPreprocessing | None
    layer_groups: list[LayerGroup]
    weights: str | None = None
    weights_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_custom(self) -> bool:
        """A user's own nn.Module (source ``module:<class>``): its architecture cannot be rebuilt by name."""
        return self.source.startswith(CUSTOM_PREFIX)

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.layer_groups]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "modality": self.modality,
            "num_features": self.num_features,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "layer_groups": [{"name": g.name, "num_params": len(g.params)} for g in self.layer_groups],
            "weights": self.weights,
            "weights_id": self.weights_id,
        }


def groups_from_names(named_params: Iterable[str], group_of) -> list[LayerGroup]:
    """Bucket parameter names into ordered groups; `group_of(name)` returns the group's name.

    Groups appear in the order of their first parameter, which for every torch module built the usual way
    (children registered in forward order) runs from input to output.
    """
    buckets: dict[str, list[str]] = {}
    for name in named_params:
        buckets.setdefault(group_of(name), []).append(name)
    return [LayerGroup(g, tuple(ps)) for g, ps in buckets.items()]


def groups_from_children(module: nn.Module, split_sequential_at: tuple[type, ...] = (nn.MaxPool2d,)
                         ) -> list[LayerGroup]:
    """Layer groups for an arbitrary module: one per top-level child with parameters.

    Parameters the module holds directly form a first group, ``root``. A top-level `nn.Sequential` is split further at pooling layers (VGG's `features` becomes its five
    conv blocks), so depth-based freezing has more than one knob on such models.
    """
    own = tuple(n for n, _ in module.named_parameters(recurse=False))
    groups: list[LayerGroup] = [LayerGroup("root", own)] if own else []
    for child_name, child in module.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, nn.Sequential) and any(isinstance(m, split_sequential_at) for m in child):
            block, names = 0, []
            for idx, sub in child.named_children():
                names += [f"{child_name}.{idx}.{p}" for p, _ in sub.named_parameters()]
                if isinstance(sub, split_sequential_at) and names:
                    groups.append(LayerGroup(f"{child_name}.block{block}", tuple(names)))
                    block, names = block + 1, []
            if names:
                groups.append(LayerGroup(f"{child_name}.block{block}", tuple(names)))
        else:
            groups.append(LayerGroup(child_name, tuple(f"{child_name}.{p}" for p, _ in child.named_parameters())))
    return [g for g in groups if g.params]
