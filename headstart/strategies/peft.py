"""Parameter-efficient fine-tuning as ordinary strategies: LoRA and IA3 through HF peft, BitFit and norm tuning.

Adapters wrap layers in place (peft's `inject_adapter_in_model` on the backbone), so the model stays a
`TransferModel` with its own head, which always trains and is always saved. LoRA and IA3 go on `nn.Linear`
and `nn.Conv2d` layers, so CNNs and ViTs work as well as transformers. After injection the spec's layer
groups are renamed to the wrapped parameters (``qkv.weight`` -> ``qkv.base_layer.weight``) and the adapter
parameters join the group of the layer they adapt: summaries, optimizer groups and freeze specs keep working.

Bundles of an adapted model hold the adapters and the head only, with the identity of the base weights, when
those can be rebuilt (a weights file, package or hub name); otherwise the adapters are merged into a full
bundle. `merge_adapters` folds them into the base layers for export; the outputs stay the same (allclose).
"""
from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math

import torch
import torch.nn as nn

from ..backbones.spec import LayerGroup
from ..errors import ConfigError
from . import STRATEGIES
from .base import Strategy, head_params, set_trainable

PEFT_METHODS = ("lora", "ia3", "bitfit", "norm")
ADAPTABLE = (nn.Linear, nn.Conv2d)


def _tuner_layers(module: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n: m for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)}


def adaptable_layers(model) -> dict[str, nn.Module]:
    """Backbone layers (names relative to the backbone) that LoRA and IA3 can wrap.

    Linear and ungrouped Conv2d layers. Left out: grouped/depthwise convolutions (peft cannot merge them, and
    their few weights gain nothing from a low-rank update) and `nn.MultiheadAttention`'s projections, which
    it reads as raw weights, so a wrapper would be silently bypassed.
    """
    skip = {f"{n}.{c}" if n else c for n, m in model.backbone.named_modules()
            if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_children()}
    return {n: m for n, m in model.backbone.named_modules()
            if isinstance(m, ADAPTABLE) and n not in skip and not (isinstance(m, nn.Conv2d) and m.groups != 1)}


def _max_rank(layer: nn.Module) -> int:
    """Rank of the layer's weight viewed as a matrix (out, in * kernel): a LoRA rank at or above it is no
    longer low-rank and costs more than training the layer itself."""
    w = layer.weight
    return min(w.shape[0], math.prod(w.shape[1:]))


def _matches(name: str, pattern: str) -> bool:
    # Like peft's own target names, a pattern may name the end of a path: 'qkv' matches 'net.blocks.0.attn.qkv'.
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def discover_targets(model, patterns: list[str] | None = None, rank: int | None = None) -> list[str]:
    """The layers to adapt, as backbone-relative module names.

    Automatic: every adaptable layer (see `adaptable_layers`) whose matrix rank exceeds `rank` (LoRA).
    With `patterns` (fnmatch over module names, matched against the whole name or its end): exactly the
    adaptable layers they name.

    Raises:
        ConfigError: a pattern matches no layer, or only layers of a kind adapters cannot wrap; or nothing
            is left to adapt.
    """
    layers = adaptable_layers(model)
    if patterns:
        modules = dict(model.backbone.named_modules())
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


def adapter_parameter_names(model) -> list[str]:
    """Full names of the parameters a PEFT method trains in the backbone (empty for a plain model)."""
    adapters = getattr(model, "adapters", None)
    if not adapters:
        return []
    method = adapters["method"]
    if method in ("lora", "ia3"):
        out = []
        for path, layer in _tuner_layers(model.backbone).items():
            for attr in layer.adapter_layer_names:
                out += [f"backbone.{path}.{attr}.{n}" for n, _ in getattr(layer, attr).named_parameters()]
        return out
    if method == "bitfit":
        return [f"backbone.{n}" for n, _ in model.backbone.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]
    return [f"backbone.{m}.{n}" for m, mod in model.backbone.named_modules() if is_norm(mod)
            for n, _ in mod.named_parameters(recurse=False)]


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: BatchNorm/InstanceNorm, LayerNorm, GroupNorm, RMSNorm and look-alikes
    (timm's RmsNorm, transformers' T5LayerNorm are plain Modules, recognised by their class name)."""
    known = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", nn.LayerNorm))
    return isinstance(module, known) or type(module).__name__.lower().endswith(("norm", "norm2d", "layernorm"))


def _regroup_spec(model, rename: dict[str, str], extra: dict[str, str]) -> None:
    """Rewrite the spec's layer groups after layers were wrapped or unwrapped.

    `rename` maps old to new names of existing parameters; `extra` maps each new parameter (an adapter) to
    the old name of a parameter whose group it joins. The groups must still cover every backbone parameter.
    """
    group_of = {p: g.name for g in model.spec.layer_groups for p in g.params}
    old_of = {**{new: old for old, new in rename.items()}, **extra}
    buckets: dict[str, list[str]] = {g.name: [] for g in model.spec.layer_groups}
    for name, _ in model.backbone.named_parameters():
        buckets[group_of[old_of.get(name, name)]].append(name)
    model.spec = dataclasses.replace(model.spec, layer_groups=[LayerGroup(g, tuple(ps)) for g, ps in buckets.items()])


def inject_adapters(model, adapters: dict) -> None:
    """Wrap the backbone's target layers with peft adapters (LoRA or IA3) and record them on the model.

    `adapters` is ``{"method": "lora", "targets": [...], "r": 8, "alpha": 16, "dropout": 0.0}`` or
    ``{"method": "ia3", "targets": [...]}``; bitfit and norm tuning add no layers.
    """
    method = adapters["method"]
    if method in ("lora", "ia3"):
        from peft import IA3Config, LoraConfig, inject_adapter_in_model

        targets = list(adapters["targets"])
        config = (LoraConfig(r=adapters["r"], lora_alpha=adapters["alpha"], lora_dropout=adapters["dropout"],
                             target_modules=targets, bias="none") if method == "lora" else
                  IA3Config(target_modules=targets, feedforward_modules=[]))
        before = {n for n, _ in model.backbone.named_parameters()}
        inject_adapter_in_model(config, model.backbone)
        tuners = _tuner_layers(model.backbone)
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
        _regroup_spec(model, rename, extra)
    elif method not in PEFT_METHODS:
        raise ConfigError(f"unknown PEFT method {method!r}; choose one of {', '.join(PEFT_METHODS)}")
    model.adapters = dict(adapters)


def merge_adapters(model):
    """Fold LoRA/IA3 adapters into their base layers and drop the wrappers, in place; returns the model.

    The merged model computes the same function (allclose) with the original layer names, so it saves as a
    plain bundle and exports like any model. BitFit and norm tuning need no merge.
    """
    adapters = getattr(model, "adapters", None)
    if adapters and adapters["method"] in ("lora", "ia3"):
        rename = {}
        tuners = _tuner_layers(model.backbone)
        for path, layer in tuners.items():
            layer.merge()
            base = layer.get_base_layer()
            for n, _ in base.named_parameters():
                rename[f"{path}.base_layer.{n}"] = f"{path}.{n}"
            parent, _, child = path.rpartition(".")
            setattr(model.backbone.get_submodule(parent) if parent else model.backbone, child, base)
        _regroup_spec(model, rename, {})  # adapter parameters are gone, the base ones get their names back
        model.keep_eval = tuple(dict.fromkeys(k for k in (_unwrapped(k, tuners) for k in model.keep_eval) if k))
    model.adapters = None
    return model


def _unwrapped(module_name: str, tuners: dict) -> str | None:
    """A module name after unwrapping: ``x.base_layer`` -> ``x``; adapter submodules of `x` -> None."""
    for path in tuners:
        wrapped = f"backbone.{path}"
        if module_name == f"{wrapped}.base_layer" or module_name.startswith(f"{wrapped}.base_layer."):
            return wrapped + module_name[len(f"{wrapped}.base_layer"):]
        if module_name.startswith(wrapped + "."):
            return None
    return module_name


def base_is_reproducible(model) -> bool:
    """True when the base weights can be rebuilt from their source (a file, package or hub name)."""
    return bool(model.spec.weights) and not model.spec.source.startswith("module:")


def adapter_state(model) -> dict[str, torch.Tensor]:
    """What an adapter bundle stores: the adapters, the head, and the statistics of norm layers that updated."""
    kept = set(adapter_parameter_names(model)) | set(head_params(model))
    state = model.state_dict()
    trained_norms = [f"backbone.{n}" for n, m in model.backbone.named_modules()
                     if isinstance(m, nn.modules.batchnorm._NormBase)
                     and not any(f"backbone.{n}" == k or f"backbone.{n}".startswith(k + ".") for k in model.keep_eval)]
    keys = [k for k in state if k in kept or k.startswith("head.")
            or any(k.startswith(n + ".") and k.rsplit(".", 1)[-1] in ("running_mean", "running_var",
                                                                       "num_batches_tracked") for n in trained_norms)]
    return {k: state[k] for k in keys}


def bundle_contents(model) -> tuple[dict[str, torch.Tensor], dict | None, nn.Module]:
    """(state to save, adapter metadata or None, the model whose description goes into the bundle).

    Adapters + head when the base weights can be rebuilt; otherwise a merged copy, saved in full.
    """
    if base_is_reproducible(model):
        meta = {**model.adapters, "base_weights": model.spec.weights, "base_weights_id": model.spec.weights_id}
        return adapter_state(model), meta, model
    merged = merge_adapters(copy.deepcopy(model))
    return merged.state_dict(), None, merged


def rebuild_base(source: str, adapters: dict, preprocessing=None):
    """The backbone an adapter bundle was trained on, with its base weights, checked by their identity.

    Raises:
        BundleError: the base weights cannot be loaded, or are not the ones the adapters were trained on.
    """
    from ..backbones import create_backbone
    from ..errors import BundleError, HeadstartError

    weights, weights_id = adapters["base_weights"], adapters.get("base_weights_id")
    text = {"pooling": preprocessing.pooling, "max_length": preprocessing.max_length} \
        if hasattr(preprocessing, "pooling") else {}
    try:
        backbone, spec = create_backbone(source, weights=weights, **text)
    except HeadstartError as e:
        raise BundleError(f"this bundle holds {adapters['method']} adapters and a head only; it needs its base "
                          f"weights {weights!r}, which did not load: {e}") from None
    if weights_id and spec.weights_id and spec.weights_id != weights_id:
        raise BundleError(f"the base weights {weights!r} have changed since the adapters were trained (sha256 "
                          f"{spec.weights_id} now, {weights_id} then); restore those weights or retrain.")
    if preprocessing is not None:
        spec.preprocessing = preprocessing
    return backbone, spec


def restore_adapters(model, adapters: dict) -> set[str]:
    """Re-create a bundle's adapters on a freshly built model; returns the state keys the bundle must hold."""
    inject_adapters(model, {k: v for k, v in adapters.items() if not k.startswith("base_weights")})
    return set(adapter_parameter_names(model)) | set(head_params(model))


class PeftStrategy(Strategy):
    """Base of the PEFT strategies: the base weights freeze, the adapters and the head train.

    BatchNorm statistics of the frozen base stay fixed (bn='frozen' by default).
    """

    default_bn = "frozen"
    method = "none"

    def adapters(self, model) -> dict:
        return {"method": self.method}

    def apply(self, model, epoch: int = 0) -> None:
        current = getattr(model, "adapters", None)
        if current is None:
            inject_adapters(model, self.adapters(model))
        elif current["method"] != self.method or any(current.get(k) != v for k, v in self.options().items()):
            raise ConfigError(f"this model already carries {current['method']} adapters ({current}); build a "
                              "fresh model for another PEFT setting, or merge_adapters(model) first")
        trainable = adapter_parameter_names(model)
        if not trainable:
            raise ConfigError(f"strategy {self.name!r} found nothing to train in this backbone "
                              f"({type(self).__doc__.splitlines()[0]})")
        set_trainable(model, trainable + head_params(model), self.bn)

    def options(self) -> dict:
        return {}


@STRATEGIES.register("lora")
class LoRA(PeftStrategy):
    """LoRA on Linear and Conv2d layers (HF peft): W x + (alpha / r) * B A x, base weights frozen.

    Hu et al. 2021. B starts at zero, so the adapted model starts as the base model. Targets are found
    automatically (every Linear and ungrouped Conv2d wider than r) or named with `peft_targets` patterns,
    e.g. ``["qkv", "fc*"]``.
    """

    name, method = "lora", "lora"

    def __init__(self, lora_r: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                 peft_targets: list[str] | None = None, **common):
        super().__init__(**common)
        if lora_r < 1:
            raise ConfigError(f"lora_r must be >= 1, received {lora_r}")
        if lora_alpha <= 0 or not 0 <= lora_dropout < 1:
            raise ConfigError(f"lora_alpha must be > 0 and lora_dropout in [0, 1); received {lora_alpha}, "
                              f"{lora_dropout}")
        self.r, self.alpha, self.dropout, self.targets = lora_r, float(lora_alpha), float(lora_dropout), peft_targets

    def options(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout}

    def adapters(self, model) -> dict:
        return {"method": "lora", **self.options(), "targets": discover_targets(model, self.targets, self.r)}


@STRATEGIES.register("ia3")
class IA3(PeftStrategy):
    """IA3 (HF peft): learned vectors rescale the outputs of Linear and Conv2d layers, base weights frozen.

    Liu et al. 2022. The vectors start at one, so the adapted model starts as the base model. They get no
    weight decay: decay would pull them towards zero, not towards their start.
    """

    name, method = "ia3", "ia3"

    def __init__(self, peft_targets: list[str] | None = None, **common):
        super().__init__(**common)
        self.targets = peft_targets

    def adapters(self, model) -> dict:
        return {"method": "ia3", "targets": discover_targets(model, self.targets)}

    def no_decay(self, name: str, param) -> bool:
        return param.ndim <= 1 or ".ia3_" in name


@STRATEGIES.register("bitfit")
class BitFit(PeftStrategy):
    """BitFit (Ben Zaken et al. 2022): train only the backbone's biases (and the head)."""

    name, method = "bitfit", "bitfit"


@STRATEGIES.register("norm-tuning")
class NormTuning(PeftStrategy):
    """Norm tuning: train only the backbone's normalisation layers (weights and biases) and the head.

    LayerNorm, BatchNorm, GroupNorm, RMSNorm, ...; BatchNorm statistics stay fixed unless bn='train'."""

    name, method = "norm-tuning", "norm"


__all__ = ["PEFT_METHODS", "adaptable_layers", "adapter_parameter_names", "adapter_state", "bundle_contents",
           "discover_targets", "inject_adapters", "merge_adapters", "rebuild_base", "restore_adapters"]
