"""`pixels:<side>`: the image itself, average-pooled to side x side per channel and flattened; no parameters.

Not a pretrained model: the raw-input contender `auto` checks transfer against (plan/contender.py). A linear
head on it is logistic or ridge regression on pixels, the classical baseline that pretrained features must
beat; where they do not (blurred, low-contrast clothing; digits rotated by an angle to regress) auto ships it.
Pooling to a fixed grid makes the features independent of the input size the data pipeline resizes to.
"""
from __future__ import annotations

import torch.nn as nn

from ..errors import HeadstartError
from .sources import SOURCES
from .spec import BackboneSpec, ImagePreprocessing
from .wrapper import FeatureBackbone


def pixel_net(side: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(side), nn.Flatten())


@SOURCES.register("pixels", help="raw pixels pooled to a grid, no parameters (auto's raw-input contender): "
                                 "pixels:16")
def build_pixels(name: str, weights: str | None = None, **kwargs) -> tuple[FeatureBackbone, BackboneSpec]:
    if not name.isdigit() or not 1 <= int(name) <= 256:
        raise HeadstartError(f"a pixels backbone is named by its grid side, 1 to 256: 'pixels:16'; got "
                             f"'pixels:{name}'.")
    if weights is not None:
        raise HeadstartError(f"pixels:{name} has no parameters, so no weights to load; leave weights out.")
    side = int(name)
    pre = ImagePreprocessing(input_size=(3, side, side), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                             interpolation="bilinear", crop_pct=1.0)
    spec = BackboneSpec(source=f"pixels:{side}", modality="image", num_features=3 * side * side,
                        preprocessing=pre, layer_groups=[])
    return FeatureBackbone(pixel_net(side)), spec
