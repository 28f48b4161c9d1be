"""Any `nn.Module` as a backbone: its output (pooled if spatial) is the feature vector."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import HeadstartError
from .spec import CUSTOM_PREFIX, BackboneSpec, ImagePreprocessing, groups_from_children
from .wrapper import FeatureBackbone, prefixed


def wrap_module(net: nn.Module, preprocessing: ImagePreprocessing | None = None,
                name: str | None = None) -> tuple[FeatureBackbone, BackboneSpec]:
    """Wrap a user's module; the feature size is found with one dry run on a dummy batch.

    Args:
        net: a module mapping images (N, C, H, W) to features (N, F) or maps (N, F, h, w).
        preprocessing: what its inputs must look like; ImageNet defaults at 224 px when omitted.
    """
    pre = preprocessing or ImagePreprocessing()
    backbone = FeatureBackbone(net)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = backbone.forward_features(torch.zeros(2, *pre.input_size))
    except Exception as e:
        raise HeadstartError(f"the module failed on a dummy batch of shape (2, {', '.join(map(str, pre.input_size))}"
                             f"): {type(e).__name__}: {e}. Pass preprocessing=ImagePreprocessing(input_size=...)"
                             " matching what the module expects.") from None
    finally:
        net.train(was_training)
    groups = prefixed(groups_from_children(net))
    spec = BackboneSpec(source=name or f"{CUSTOM_PREFIX}{type(net).__name__}", modality="image",
                        num_features=out.shape[1], preprocessing=pre, layer_groups=groups)
    return backbone, spec

