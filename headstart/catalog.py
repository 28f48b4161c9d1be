"""What `headstart list` shows: every registry, by the name a user types."""
from __future__ import annotations

from typing import Callable


def _backbones(pattern: str) -> list[str]:
    from .backbones import SOURCES, list_backbones

    if pattern == "*":  # timm alone has over a thousand models: show sources and how to list them
        return [f"{s}:<name>    {SOURCES.help(s)}" for s in SOURCES] + \
               ["list models with a pattern, e.g. headstart list backbones 'timm:resnet*'"]
    return list_backbones(pattern)


def _registry(getter: Callable) -> Callable[[str], list[str]]:
    def lister(pattern: str) -> list[str]:
        reg = getter()
        names = reg.list(pattern)
        width = max((len(n) for n in names), default=0) + 2
        return [f"{n:<{width}}{reg.help(n)}" for n in names]

    return lister


def _strategies():
    from .strategies import STRATEGIES

    return STRATEGIES


def _datasets():
    from .data import DATASETS

    return DATASETS


def _heads():
    from .heads import HEADS

    return HEADS


def _metrics():
    from .metrics import METRICS

    return METRICS


def _weights():
    from .backbones.weights import WEIGHT_PACKAGES

    return WEIGHT_PACKAGES


def _scores():
    from .plan.transferability import SCORES

    return SCORES


class _Catalog(dict):
    def get(self, what: str):  # type: ignore[override]
        from .registry import unknown_name

        if what not in self:
            raise unknown_name("list", what, sorted(self))
        return self[what]


CATALOG = _Catalog(backbones=_backbones, strategies=_registry(_strategies), datasets=_registry(_datasets),
                   heads=_registry(_heads), metrics=_registry(_metrics), weights=_registry(_weights),
                   scores=_registry(_scores))
