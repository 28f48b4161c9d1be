"""What `headstart list` shows: every registry, by the name a user types."""
from __future__ import annotations

import fnmatch
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


def _strategies(pattern: str) -> list[str]:
    """Each strategy with its own options and their defaults; the options every strategy takes, once."""
    from .options import declared
    from .strategies import STRATEGIES, StrategyOptions

    common = declared(StrategyOptions)
    names = STRATEGIES.list(pattern)
    width = max((len(n) for n in names), default=0) + 2
    lines = []
    for name in names:
        own = {k: d for k, d in declared(STRATEGIES.get(name).Options).items()
               if k not in common or d.default != common[k].default}
        lines.append(f"{name:<{width}}{STRATEGIES.help(name)}")
        lines += [f"{'':<{width}}  {k}={d.default!r}: {d.help}" for k, d in own.items()]
    if fnmatch.fnmatch("auto", pattern):  # the planner, not a registered strategy: it picks one of the above
        lines.append(f"{'auto':<{width}}headstart chooses the strategy and its settings from the task, data and budget")
        lines.append(f"{'':<{width}}  budget=None: time budget such as 90s, 10m, 1.5h (None = no limit)")
    return lines + ["", "every strategy also takes: " + "; ".join(f"{k}={d.default!r} ({d.help})"
                                                               for k, d in common.items())]


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


def _weightings():
    from .objectives import WEIGHTINGS

    return WEIGHTINGS


def _domains():
    from .objectives import DOMAIN_TERMS

    return DOMAIN_TERMS


class _Catalog(dict):
    def get(self, what: str):  # type: ignore[override]
        from .registry import unknown_name

        if what not in self:
            raise unknown_name("list", what, sorted(self))
        return self[what]


CATALOG = _Catalog(backbones=_backbones, strategies=_strategies, datasets=_registry(_datasets),
                   heads=_registry(_heads), metrics=_registry(_metrics), weights=_registry(_weights),
                   scores=_registry(_scores), weightings=_registry(_weightings), domains=_registry(_domains))
