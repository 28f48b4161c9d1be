"""A backbone as a chain of stages, where its forward allows it: the seam for caching a frozen prefix.

Many CNNs (timm EfficientNet/ResNet families, torchvision ResNet/VGG, toy nets) compute their features by
running their children in order. `sequential_stages` proposes that chain (top-level Sequentials expanded
one level) and accepts it only if it reproduces `forward_features` exactly on an example batch, so a model
whose forward does more (a ViT's position embedding, a reshape between layers) is never mis-split.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .wrapper import FeatureBackbone


class StageChain(nn.Module):
    """Run stages[start:stop] in order; the last chain pools and flattens like FeatureBackbone."""

    def __init__(self, stages: list[nn.Module], finish: bool):
        super().__init__()
        self.stages = stages  # a plain list: these modules stay registered in the backbone, not twice here
        self.finish = finish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        if self.finish:
            x = x.mean(dim=(2, 3)) if x.ndim == 4 else x
            x = x.flatten(1)
        return x


def candidate_stages(backbone: FeatureBackbone) -> list[nn.Module]:
    stages: list[nn.Module] = []
    for child in backbone.net.children():
        stages += list(child.children()) if isinstance(child, nn.Sequential) else [child]
    return stages


@torch.no_grad()
def sequential_stages(backbone: FeatureBackbone, example: torch.Tensor) -> list[nn.Module] | None:
    """The backbone's stages in forward order, or None when its forward is not such a chain."""
    if not isinstance(backbone, FeatureBackbone) or not isinstance(example, torch.Tensor):
        return None
    stages = candidate_stages(backbone)
    if len(stages) < 2:
        return None
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        expected = backbone.forward_features(example)
        got = StageChain(stages, finish=True)(example)
        ok = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    except Exception:  # a stage that cannot take the previous one's output: not a chain
        ok = False
    finally:
        for m, mode in modes.items():
            m.training = mode
    return stages if ok else None


def stochastic_in_training(module: nn.Module) -> bool:
    """True if the module (or a child) would behave differently in train mode right now."""
    for m in module.modules():
        if not m.training:
            continue
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)):
            return True
        if type(m).__name__ in ("DropPath", "DropBlock2d") and (getattr(m, "drop_prob", 0) or 0) > 0:  # timm
            return True
    return False


def frozen_prefix_length(stages: list[nn.Module]) -> int:
    """How many leading stages hold no trainable parameter and act the same in train and eval mode."""
    k = 0
    for stage in stages:
        if any(p.requires_grad for p in stage.parameters()) or stochastic_in_training(stage):
            break
        k += 1
    return k
