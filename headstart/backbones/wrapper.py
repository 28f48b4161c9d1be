"""The module every source returns: `forward_features(x) -> (N, F)`."""
from __future__ import annotations

import torch
import torch.nn as nn


class FeatureBackbone(nn.Module):
    """Wraps a network whose output is features; pools and flattens so callers always get (N, F).

    Parameter names carry the prefix ``net.``; the spec's layer groups use the same names.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 4:  # a network that stops before pooling: global average pool
            out = out.mean(dim=(2, 3))
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def prefixed(groups, prefix: str = "net."):
    """Layer groups built on the inner network, renamed to the wrapper's parameter names."""
    from .spec import LayerGroup

    return [LayerGroup(g.name, tuple(prefix + p for p in g.params)) for g in groups]
