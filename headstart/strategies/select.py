"""The freeze spec: one small language that selects parts of a model through its layer groups only.

A spec is one term, or several joined by commas (their union):

    last:2             the last two backbone layer groups (nearest the head)
    first:1            the first backbone layer group (nearest the input)
    from:blocks.3      that group and every group after it, up to the output
    blocks.*           groups whose name matches the pattern (fnmatch), e.g. ``stage*``, ``head``
    *.norm*.weight     otherwise: backbone parameters whose name matches the pattern

Group names are those of ``model.spec.layer_groups`` (shown by `hs.trainable_summary`; a ``backbone.`` prefix
is accepted and ignored) plus ``head``. Parameter names are relative to the backbone module, as in the spec.
Only the spec is read, never a model's attribute names, so the same spec works for CNNs, ViTs and text
encoders alike (``last:2`` is the last two stages of a ResNet, the last two blocks of a ViT or BERT).
"""
from __future__ import annotations

import fnmatch
import re

from ..errors import ConfigError

HEAD = "head"
_DEPTH = re.compile(r"^(last|first|from):(.+)$")


def parse_spec(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Split a spec into its terms and check their syntax (not yet against a model).

    Raises:
        ConfigError: an empty spec, or ``last:``/``first:`` without a positive integer.
    """
    terms = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    terms = [t for t in terms if t]
    if not terms:
        raise ConfigError(f"empty freeze spec {spec!r}; give e.g. 'last:2', 'first:1', 'from:<group>' "
                          "or a name pattern like 'blocks.1*'")
    for term in terms:
        m = _DEPTH.match(term)
        if m and m.group(1) in ("last", "first") and not (m.group(2).isdigit() and int(m.group(2)) > 0):
            raise ConfigError(f"freeze spec term {term!r}: {m.group(1)}: needs a positive number of layer "
                              f"groups, e.g. '{m.group(1)}:2'")
    return terms


def _strip(name: str) -> str:
    return name[len("backbone."):] if name.startswith("backbone.") else name


def _available(groups: list[str]) -> str:
    return f"the layer groups are {', '.join(groups)} (input to output), then {HEAD}"


def select_params(spec: str | list[str], model) -> set[str]:
    """Full parameter names (``backbone.<p>``, ``head.<p>``) selected by `spec` on `model`.

    Every term must select something: a term that matches nothing is almost always a typo, and silently
    training (or freezing) the wrong layers is the failure users report most.

    Raises:
        ConfigError: a term matches no group and no parameter, or asks for more groups than exist; the
            message lists the groups that exist.
    """
    groups = [(g.name, [f"backbone.{p}" for p in g.params]) for g in model.spec.layer_groups]
    names = [g for g, _ in groups]
    head = [n for n, _ in model.named_parameters() if n.startswith(HEAD + ".")]
    by_name = dict(groups, **{HEAD: head})
    selected: set[str] = set()
    for term in parse_spec(spec):
        m = _DEPTH.match(term)
        if m:
            kind, arg = m.groups()
            if kind == "from":
                arg = _strip(arg)
                if arg not in names:
                    raise ConfigError(f"freeze spec {term!r}: no layer group named {arg!r}; {_available(names)}")
                chosen = names[names.index(arg):]
            else:
                count = int(arg)
                if count > len(names):
                    raise ConfigError(f"freeze spec {term!r} asks for {count} layer groups but the backbone has "
                                      f"{len(names)}; {_available(names)}")
                chosen = names[-count:] if kind == "last" else names[:count]
            for g in chosen:
                selected.update(by_name[g])
            continue
        pattern = _strip(term)
        matched_groups = [g for g in [*names, HEAD] if fnmatch.fnmatchcase(g, pattern)]
        if matched_groups:
            for g in matched_groups:
                selected.update(by_name[g])
            continue
        matched = [p for _, ps in groups for p in ps if fnmatch.fnmatchcase(_strip(p), pattern)]
        matched += [p for p in head if fnmatch.fnmatchcase(p, pattern)]
        if not matched:
            example = next((_strip(ps[0]) for _, ps in groups if ps), "")
            raise ConfigError(f"freeze spec term {term!r} matches no layer group and no parameter; "
                              f"{_available(names)}. Parameter patterns match names like {example!r}.")
        selected.update(matched)
    return selected
