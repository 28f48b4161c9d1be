"""PEFT adapters on a backbone: LoRA and IA3 through HF peft, and what BitFit and norm tuning train.

Adapters wrap layers in place (peft's `inject_adapter_in_model` on the backbone). LoRA and IA3 go on
`nn.Linear` and `nn.Conv2d` layers, so CNNs and ViTs work as well as transformers. After injection the spec's
layer groups are renamed to the wrapped parameters (``qkv.weight`` -> ``qkv.base_layer.weight``) and the
adapter parameters join the group of the layer they adapt: summaries, optimizer groups and freeze specs keep
working. `merge_adapters` folds them into the base layers for export; the outputs stay the same (allclose).

These functions work on a (backbone, spec) pair; `TransferModel.add_adapters` / `merge_adapters` call them
and keep the model's own record of its adapters.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math

import torch.nn as nn

from .backbones.spec import LayerGroup
from .errors import ConfigError

PEFT_METHODS = ("lora", "ia3", "bitfit", "norm")
ADAPTABLE = (nn.Linear, nn.Conv2d)


def _tuner_layers(module: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)}


def adaptable_layers(backbone: nn.Module) -> dict[str, nn.Module]:
    """Backbone layers (names relative to the backbone) that LoRA and IA3 can wrap.

    Linear and ungrouped Conv2d layers. Left out: grouped/depthwise convolutions (peft cannot merge them, and
    their few weights gain nothing from a low-rank update) and `nn.MultiheadAttention`'s projections, which
    it reads as raw weights, so a wrapper would be silently bypassed.
    """
    skip = {f"{n}.{c}" if n else c for n, m in backbone.named_modules()
            if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_children()}
    return {n: m for n, m in backbone.named_modules()
            if isinstance(m, ADAPTABLE) and n not in skip and not (isinstance(m, nn.Conv2d) and m.groups != 1)}


def _max_rank(layer: nn.Module) -> int:
    """Rank of the layer's weight viewed as a matrix (out, in * kernel): a LoRA rank at or above it is no
    longer low-rank and costs more than training the layer itself."""
    w = layer.weight
    return min(w.shape[0], math.prod(w.shape[1:]))


def _matches(name: str, pattern: str) -> bool:
    # Like peft's own target names, a pattern may name the end of a path: 'qkv' matches 'net.blocks.0.attn.qkv'.
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def discover_targets(backbone: nn.Module, patterns: list[str] | None = None, rank: int | None = None) -> list[str]:
    """The layers to adapt, as backbone-relative module names.

    Automatic: every adaptable layer (see `adaptable_layers`) whose matrix rank exceeds `rank` (LoRA).
    With `patterns` (fnmatch over module names, matched against the whole name or its end): exactly the
    adaptable layers they name.

    Raises:
        ConfigError: a pattern matches no layer, or only layers of a kind adapters cannot wrap; or nothing
            is left to adapt.
    """
    layers = adaptable_layers(backbone)
    if patterns:
        modules = dict(backbone.named_modules())
        chosen: list[str] = []
        for pattern in patterns:
            hits = [n for n in modules if n and _matches(n, pattern)]
            if not hits:
                raise ConfigError(f"peft_targets pattern {pattern!r} matches no layer of the backbone. Layers "
                                  f"that adapters can wrap: {_examples(layers)}")
            ok = [n for n in hits if n in layers]
            if not ok:
                kinds = sorted({type(modules[n]).__name__ for n in hits})
                raise ConfigError(f"peft_targets pattern {pattern!r} matches only {', '.join(kinds)} layers "
                                  f"({_examples(hits)}); adapters wrap Linear and ungrouped Conv2d layers, e.g. "
                                  f"{_examples(layers)}")
            chosen += [n for n in ok if n not in chosen]
        return sorted(chosen, key=list(layers).index)
    found = [n for n, m in layers.items() if rank is None or _max_rank(m) > rank]
    if not found:
        raise ConfigError("no backbone layer to adapt: adapters wrap Linear and ungrouped Conv2d layers"
                          + (f" wider than the rank r={rank}" if rank else "")
                          + f". Candidates: {_examples(layers) or 'none'}. Lower lora_r or name the layers "
                          "with peft_targets.")
    return found


def _examples(names, limit: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def adapter_parameter_names(backbone: nn.Module, method: str) -> list[str]:
    """Full names (``backbone.``...) of the parameters a PEFT method trains in the backbone."""
    if method in ("lora", "ia3"):
        out = []
        for path, layer in _tuner_layers(backbone).items():
            for attr in layer.adapter_layer_names:
                out += [f"backbone.{path}.{attr}.{n}" for n, _ in getattr(layer, attr).named_parameters()]
        return out
    if method == "bitfit":
        return [f"backbone.{n}" for n, _ in backbone.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]
    return [f"backbone.{m}.{n}" for m, mod in backbone.named_modules() if is_norm(mod)
            for n, _ in mod.named_parameters(recurse=False)]


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: BatchNorm/InstanceNorm, LayerNorm, GroupNorm, RMSNorm and look-alikes
    (timm's RmsNorm, transformers' T5LayerNorm are plain Modules, recognised by their class name)."""
    known = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", nn.LayerNorm))
    return isinstance(module, known) or type(module).__name__.lower().endswith(("norm", "norm2d", "layernorm"))


def _regroup_spec(backbone: nn.Module, spec, rename: dict[str, str], extra: dict[str, str]):
    """The spec with its layer groups rewritten after layers were wrapped or unwrapped.

    `rename` maps old to new names of existing parameters; `extra` maps each new parameter (an adapter) to
    the old name of a parameter whose group it joins. The groups must still cover every backbone parameter.
    """
    group_of = {p: g.name for g in spec.layer_groups for p in g.params}
    old_of = {**{new: old for old, new in rename.items()}, **extra}
    buckets: dict[str, list[str]] = {g.name: [] for g in spec.layer_groups}
    for name, _ in backbone.named_parameters():
        buckets[group_of[old_of.get(name, name)]].append(name)
    return dataclasses.replace(spec, layer_groups=[LayerGroup(g, tuple(ps)) for g, ps in buckets.items()])


def inject_adapters(backbone: nn.Module, spec, adapters: dict):
    """Wrap the backbone's target layers with peft adapters (LoRA or IA3), in place; returns the new spec.

    `adapters` is ``{"method": "lora", "targets": [...], "r": 8, "alpha": 16, "dropout": 0.0}`` or
    ``{"method": "ia3", "targets": [...]}``; bitfit and norm tuning add no layers.
    """
    method = adapters["method"]
    if method not in PEFT_METHODS:
        raise ConfigError(f"unknown PEFT method {method!r}; choose one of {', '.join(PEFT_METHODS)}")
    if method in ("lora", "ia3"):
        from peft import IA3Config, LoraConfig, inject_adapter_in_model

        targets = list(adapters["targets"])
        config = (LoraConfig(r=adapters["r"], lora_alpha=adapters["alpha"], lora_dropout=adapters["dropout"],
                             target_modules=targets, bias="none") if method == "lora" else
                  IA3Config(target_modules=targets, feedforward_modules=[]))
        before = {n for n, _ in backbone.named_parameters()}
        inject_adapter_in_model(config, backbone)
        tuners = _tuner_layers(backbone)
        if sorted(tuners) != sorted(targets):
            raise ConfigError(f"peft wrapped {sorted(tuners)[:5]} but the targets were {targets[:5]}")
        rename, extra = {}, {}
        for path, layer in tuners.items():
            base = next(n for n, _ in layer.get_base_layer().named_parameters())  # 'weight'
            for n, _ in layer.named_parameters():
                full = f"{path}.{n}"
                if n.startswith("base_layer."):
                    rename[f"{path}.{n[len('base_layer.'):]}"] = full
                else:
                    extra[full] = f"{path}.{base}"
        assert set(rename) <= before
        return _regroup_spec(backbone, spec, rename, extra)
    return spec


def merge_adapters(backbone: nn.Module, spec, method: str):
    """Fold LoRA/IA3 adapters into their base layers and drop the wrappers, in place.

    Returns (the new spec, a function renaming a module name of the wrapped model to the merged one, None
    for adapter submodules). BitFit and norm tuning need no merge.
    """
    if method not in ("lora", "ia3"):
        return spec, lambda name: name
    rename = {}
    tuners = _tuner_layers(backbone)
    for path, layer in tuners.items():
        layer.merge()
        base = layer.get_base_layer()
        for n, _ in base.named_parameters():
            rename[f"{path}.base_layer.{n}"] = f"{path}.{n}"
        parent, _, child = path.rpartition(".")
        setattr(backbone.get_submodule(parent) if parent else backbone, child, base)
    # Adapter parameters are gone, the base ones get their names back.
    return _regroup_spec(backbone, spec, rename, {}), lambda name: _unwrapped(name, tuners)


def _unwrapped(module_name: str, tuners: dict) -> str | None:
    """A module name after unwrapping: ``x.base_layer`` -> ``x``; adapter submodules of `x` -> None."""
    for path in tuners:
        wrapped = f"backbone.{path}"
        if module_name == f"{wrapped}.base_layer" or module_name.startswith(f"{wrapped}.base_layer."):
            return wrapped + module_name[len(f"{wrapped}.base_layer"):]
        if module_name.startswith(wrapped + "."):
            return None
    return module_name
