"""The model bundle: weights as safetensors plus JSON metadata (labels, preprocessing, backbone identity).

Loading rebuilds the architecture from the backbone's registered name without downloading anything, then
reads the weights with safetensors, which cannot run code.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .atomic import atomic_write, atomic_write_text
from .backbones import create_backbone
from .backbones.custom import wrap_module
from .backbones.spec import CUSTOM_PREFIX, TextPreprocessing, preprocessing_from_dict
from .errors import BundleError, HeadstartError
from .model import TransferModel

FORMAT = "headstart-bundle"
VERSION = 1
WEIGHTS, META = "model.safetensors", "headstart.json"
TEXT_DIR = "text"  # text models: the encoder's config.json and the tokenizer files, so loading needs no hub


def save_bundle(model: TransferModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `model` as a bundle folder (each file atomically)."""
    return bundle_writer(model, path, extra)()


def bundle_writer(model: TransferModel, path: str | Path, extra: dict[str, Any] | None = None,
                  state: dict[str, torch.Tensor] | None = None) -> Callable[[], Path]:
    """Snapshot `model` now (weights copied) and return a function that writes the bundle.

    The snapshot lets a background thread write while training changes the live weights. `state`: the
    model's full weights when they are not its own `state_dict()` (a sharded model's, gathered).
    """
    from safetensors.torch import save_file

    path = Path(path)
    state, adapters = (model.state_dict() if state is None else state), None
    if model.adapters:  # PEFT: adapters + head only, or merged if the base can't be rebuilt
        state, adapters, model = bundle_contents(model)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    meta = {"format": FORMAT, "version": VERSION, **model.describe(), **({"adapters": adapters} if adapters else {}),
            **(extra or {})}
    text = isinstance(model.spec.preprocessing, TextPreprocessing)
    if text:
        meta["backbone"]["preprocessing"]["tokenizer"] = TEXT_DIR  # relative: the bundle folder can move
    backbone, preprocessing = model.backbone, model.spec.preprocessing

    def write() -> Path:
        atomic_write(path / WEIGHTS, lambda tmp: save_file(state, tmp))
        if text:
            from .backbones.hf_source import save_text_assets

            save_text_assets(backbone, preprocessing, path / TEXT_DIR)
        atomic_write_text(path / META, json.dumps(meta, indent=2))
        return path

    return write


# ----------------------------------------------------------------------------- PEFT bundles

def base_is_reproducible(model) -> bool:
    """True when the base weights can be rebuilt from their source (a file, package or hub name)."""
    return bool(model.spec.weights) and not model.spec.is_custom


def adapter_state(model) -> dict[str, torch.Tensor]:
    """What an adapter bundle stores: the adapters, the head, and the statistics of norm layers that updated."""
    kept = set(model.adapter_parameter_names()) | set(model.head_parameter_names())
    state = model.state_dict()
    trained_norms = [f"backbone.{n}" for n, m in model.backbone.named_modules()
                     if isinstance(m, nn.modules.batchnorm._NormBase)
                     and not any(f"backbone.{n}" == k or f"backbone.{n}".startswith(k + ".") for k in model.eval_modules)]
    heads = tuple(f"{name}." for name in (model.MAIN, *model.extra_heads))
    keys = [k for k in state if k in kept or k.startswith(heads)
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
    merged = copy.deepcopy(model).merge_adapters()
    return merged.state_dict(), None, merged


def rebuild_base(source: str, adapters: dict, preprocessing=None):
    """The backbone an adapter bundle was trained on, with its base weights, checked by their identity.

    Raises:
        BundleError: the base weights cannot be loaded, or are not the ones the adapters were trained on.
    """
    weights, weights_id = adapters["base_weights"], adapters.get("base_weights_id")
    text = {"pooling": preprocessing.pooling, "max_length": preprocessing.max_length} \
        if isinstance(preprocessing, TextPreprocessing) else {}
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
    model.add_adapters({k: v for k, v in adapters.items() if not k.startswith("base_weights")})
    return set(model.adapter_parameter_names()) | set(model.head_parameter_names())


def update_meta(path: str | Path, **fields: Any) -> None:
    """Add or replace fields of a bundle's headstart.json (atomically)."""
    folder = bundle_dir(path)
    atomic_write_text(folder / META, json.dumps({**read_meta(folder), **fields}, indent=2))


def bundle_dir(path: str | Path) -> Path:
    """Accept a bundle folder or a run folder (whose best model lives in `best/`)."""
    path = Path(path)
    for candidate in (path, path / "best"):
        if (candidate / META).is_file():
            return candidate
    if not path.exists():
        raise BundleError(f"{str(path)!r} does not exist; give a run folder or a bundle folder")
    raise BundleError(f"no model bundle in {str(path)!r}: expected {META} there or in its best/ folder. "
                      "Has the run finished at least one epoch?")


def read_meta(path: str | Path) -> dict[str, Any]:
    """The bundle's headstart.json as a dict.

    Raises:
        BundleError: no bundle there, or its headstart.json is damaged or from a newer headstart.
    """
    file = bundle_dir(path) / META
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError (empty or cut off) and UnicodeDecodeError (garbage bytes) both
        problem = "it is empty" if not file.read_bytes().strip() else f"it is not valid JSON ({e})"
        raise BundleError(f"{str(file)!r} is damaged: {problem}. Re-export the bundle from its run folder, or "
                          "copy the file again from where the bundle was made.") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{str(file)!r} is damaged: it holds a JSON {type(meta).__name__}, not the object "
                          "headstart writes. Re-export the bundle from its run folder.")
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise BundleError(f"{str(path)!r} is not a headstart bundle of version <= {VERSION} "
                          f"(format={meta.get('format')!r}, version={meta.get('version')!r})")
    return meta


def load_model(path: str | Path, module: nn.Module | None = None, num_classes: int | None = None) -> TransferModel:
    """Rebuild a TransferModel from a bundle.

    Args:
        module: the architecture, for bundles of a custom nn.Module (its weights come from the bundle).
        num_classes: if given, the bundle must have exactly this many outputs.
    Raises:
        BundleError: when the bundle is missing, damaged, or does not match what was asked.
    """
    from safetensors.torch import load_file

    folder = bundle_dir(path)
    meta = read_meta(folder)
    head, labels, task = meta["head"], meta["labels"], meta["task"]
    if task in ("classification", "multilabel") and len(labels) != head["num_outputs"]:
        raise BundleError(f"bundle {str(folder)!r} is inconsistent: {len(labels)} labels for a head with "
                          f"{head['num_outputs']} outputs. Re-export it from its run folder.")
    if num_classes is not None and head["num_outputs"] != num_classes:
        raise BundleError(f"bundle {str(folder)!r} has {head['num_outputs']} classes ({labels[:10]}), but "
                          f"{num_classes} were asked for. Load it without num_classes, or fine-tune a new "
                          f"head: model.reset_head({num_classes}).")
    bb = meta["backbone"]
    pre = preprocessing_from_dict(bb.get("preprocessing"))
    if isinstance(pre, TextPreprocessing):  # the tokenizer and the encoder's config travel in the bundle
        if not (folder / TEXT_DIR / "config.json").is_file():
            raise BundleError(f"bundle {str(folder)!r} holds a text model but not its {TEXT_DIR}/config.json and "
                              "tokenizer files; re-export it from its run folder.")
        pre = dataclasses.replace(pre, tokenizer=str(folder / TEXT_DIR))
    adapters = meta.get("adapters")
    if module is not None:
        backbone, spec = wrap_module(module, pre, name=bb["source"])
    elif bb["source"].startswith(CUSTOM_PREFIX):
        raise BundleError(f"bundle {str(folder)!r} holds a custom module ({bb['source']}); pass the "
                          "architecture: hs.load(path, module=MyNet()).")
    elif adapters:  # a PEFT bundle holds adapters and head only: the base weights come from their source
        backbone, spec = rebuild_base(bb["source"], adapters, pre)
    elif isinstance(pre, TextPreprocessing):
        from .backbones.hf_source import text_backbone_from_folder

        backbone, spec = text_backbone_from_folder(folder / TEXT_DIR, pre, bb["source"])
    else:
        backbone, spec = create_backbone(bb["source"])  # architecture only: the weights come from the bundle
        spec.preprocessing = pre
    spec.weights, spec.weights_id = bb.get("weights"), bb.get("weights_id")
    model = TransferModel(backbone, spec, head["kind"], head["num_outputs"], labels or None, task,
                          head["dropout"], head["hidden"])
    if meta.get("decision"):
        model.set_decision(**meta["decision"])
    model.main_task = meta.get("main_task")
    for name, h in meta.get("extra_heads", {}).items():
        model.add_head(name, h["num_outputs"], task=h["task"], kind=h["kind"], labels=h["labels"] or None,
                       dropout=h["dropout"], hidden=h["hidden"])
    if adapters:
        required = restore_adapters(model, adapters)
    try:
        state = load_file(str(folder / WEIGHTS))
    except Exception as e:
        raise BundleError(f"cannot read {str(folder / WEIGHTS)!r} ({type(e).__name__}: {e}); the file is "
                          "damaged. Re-export the bundle from its run folder.") from None
    own = model.state_dict()
    mismatched = [f"{k}: bundle {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing, unexpected = (required if adapters else set(own)) - set(state), set(state) - set(own)
    if mismatched or missing or unexpected:
        raise BundleError(f"bundle weights do not match its metadata: {mismatched[:3]} "
                          f"missing={sorted(missing)[:3]} unexpected={sorted(unexpected)[:3]}. "
                          "The class count or backbone in headstart.json differs from model.safetensors.")
    model.load_state_dict(state, strict=not adapters)
    model.eval()
    return model
