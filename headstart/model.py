"""TransferModel: a pretrained backbone plus a new head, and `create_model` to build one."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .backbones import BackboneSpec, ImagePreprocessing, create_backbone, split_name
from .backbones.custom import wrap_module
from .adapters import adapter_parameter_names, inject_adapters, merge_adapters
from .errors import HeadstartError
from .heads import build_head

TASKS = ("classification", "multilabel", "regression")  # multilabel: independent sigmoid per class (BCE)


class TransferModel(nn.Module):
    """Backbone + named heads. `forward(x)` gives the main head's logits (or regression outputs), (N, K).

    A single-task model has one head, named ``head``; `add_head` puts further named heads on the same
    backbone (multi-task), each with its own task. `forward(x, with_features=True)` returns every head's
    outputs by name and the pooled features, in one pass through the backbone.

    The BatchNorm policy of a strategy lives here (`keep_in_eval`): module names that stay in eval mode
    whenever the model is put in train mode. Overriding `train()` makes the policy hold for every caller
    (our loop, Lightning, user code): a frozen backbone left in train mode would keep updating its BatchNorm
    statistics, the textbook trap that costs 13 points on Fashion-MNIST.
    """

    MAIN = "head"  # the name of the single-task head; also its parameters' prefix (`head.0.weight`)

    def __init__(self, backbone: nn.Module, spec: BackboneSpec, head_kind: str = "linear",
                 num_outputs: int | None = None, labels: list[str] | None = None, task: str = "classification",
                 dropout: float = 0.0, hidden: int = 512):
        super().__init__()
        if task not in TASKS:
            raise HeadstartError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        self.backbone = backbone
        self.spec = spec
        self.task = task
        self.head_args = {"kind": head_kind, "dropout": dropout, "hidden": hidden}
        self.labels: list[str] = list(labels or [])
        self.head: nn.Module | None = None
        # Further named heads: {name: {"task", "labels", "kind", "num_outputs", "dropout", "hidden"}}; each
        # module is a child of the model under its name.
        self.extra_heads: dict[str, dict[str, Any]] = {}
        self._keep_eval: tuple[str, ...] = ()
        # PEFT adapters on the backbone, as {"method": "lora", "r": ..., "targets": [...]}; saved in bundles so
        # they can be rebuilt.
        self._adapters: dict[str, Any] | None = None
        # A binary classifier's decision rule when it is not argmax: {"positive": index, "threshold": t}.
        self.decision: dict[str, Any] | None = None
        # Multi-task: the name of the task the main head serves (its outputs are keyed by it); None: "head".
        self.main_task: str | None = None
        if num_outputs is None and self.labels:
            num_outputs = len(self.labels)
        if num_outputs is not None:
            self.reset_head(num_outputs, self.labels or None)

    @property
    def num_outputs(self) -> int | None:
        return None if self.head is None else self.head_args["num_outputs"]

    def reset_head(self, num_outputs: int, labels: list[str] | None = None) -> None:
        """Put a fresh main head with `num_outputs` outputs on the backbone (labels default to '0'..'K-1')."""
        if num_outputs < 1:
            raise HeadstartError(f"a head needs at least 1 output, received num_outputs={num_outputs}")
        if labels is not None and len(labels) != num_outputs:
            raise HeadstartError(f"{len(labels)} labels for a head with {num_outputs} outputs")
        args = self.head_args
        self.head = build_head(args["kind"], self.spec.num_features, num_outputs, args["dropout"], args["hidden"])
        self.head_args = {**args, "num_outputs": num_outputs}
        if self.task in ("classification", "multilabel"):
            self.labels = list(labels) if labels is not None else [str(i) for i in range(num_outputs)]

    def add_head(self, name: str, num_outputs: int, *, task: str = "classification", kind: str = "linear",
                 labels: list[str] | None = None, dropout: float = 0.0, hidden: int = 512) -> None:
        """Put a further named head on the shared backbone (multi-task); its parameters are `<name>.*`."""
        if not name.isidentifier() or name in (self.MAIN, self.main_task) or hasattr(self, name):
            raise HeadstartError(f"head name {name!r} must be a Python identifier other than {self.MAIN!r}, the "
                                 "main task's name and the model's own attributes (backbone, spec, ...); e.g. "
                                 "'species'")
        if task not in TASKS:
            raise HeadstartError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        self.add_module(name, build_head(kind, self.spec.num_features, num_outputs, dropout, hidden))
        self.extra_heads[name] = {"task": task, "labels": list(labels or []), "kind": kind,
                                  "num_outputs": num_outputs, "dropout": dropout, "hidden": hidden}

    @property
    def main_name(self) -> str:
        """The key of the main head's outputs: its task's name in a multi-task model, else "head"."""
        return self.main_task or self.MAIN

    @property
    def heads(self) -> dict[str, nn.Module]:
        """Every head by its outputs' name, the main one first."""
        main = {self.main_name: self.head} if self.head is not None else {}
        return {**main, **{name: getattr(self, name) for name in self.extra_heads}}

    def head_tasks(self) -> dict[str, dict[str, Any]]:
        """Each head's task, labels and outputs by its outputs' name, the main one first."""
        main = {self.main_name: {"task": self.task, "labels": list(self.labels), "num_outputs": self.num_outputs}}
        return {**main, **{name: dict(h) for name, h in self.extra_heads.items()}}

    def head_parameter_names(self) -> list[str]:
        """Full names of every head's parameters (heads are new: they always train)."""
        prefixes = tuple(f"{name}." for name in (self.MAIN, *self.extra_heads))
        return [n for n, _ in self.named_parameters() if n.startswith(prefixes)]

    def backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # A frozen backbone needs no autograd graph: skipping it saves memory and about a third of the time.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trainable()):
            return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise HeadstartError("this model has no head yet: call reset_head(num_classes) or pass "
                                 "num_classes to create_model")
        return self.head(features)

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's outputs on the same features, by name."""
        return {self.main_name: self.forward_head(features),
                **{name: getattr(self, name)(features) for name in self.extra_heads}}

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """The main head's outputs; with `with_features`, ({head name: outputs}, pooled features).

        Objectives call it with `with_features=True` through `model(...)`, so a DDP wrapper sees the pass.
        """
        features = self.forward_features(x)
        if with_features:
            return self.forward_heads(features), features
        return self.forward_head(features)

    # --------------------------------------------------------------------------------------- BN policy

    @property
    def eval_modules(self) -> tuple[str, ...]:
        """Module names kept in eval mode whenever the model trains (a strategy's BatchNorm policy)."""
        return self._keep_eval

    def keep_in_eval(self, names: tuple[str, ...]) -> None:
        """Set the modules that stay in eval mode in training: frozen parts, and BatchNorm under bn='frozen'."""
        self._keep_eval = tuple(names)
        if self.training:
            self.train()

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if mode:
            for name in self._keep_eval:
                self.get_submodule(name).eval()
        return self

    # --------------------------------------------------------------------------------------- adapters

    @property
    def adapters(self) -> dict[str, Any] | None:
        """The PEFT adapters on the backbone (``{"method": "lora", "r": 8, ...}``), or None."""
        return None if self._adapters is None else dict(self._adapters)

    def add_adapters(self, adapters: dict[str, Any]) -> None:
        """Wrap the backbone's layers with PEFT adapters (see `adapters.py`) and record them."""
        if self._adapters is not None:
            raise HeadstartError(f"this model already carries {self._adapters['method']} adapters; build a fresh "
                                 "model for another PEFT setting, or merge_adapters() first")
        self.spec = inject_adapters(self.backbone, self.spec, adapters)
        self._adapters = dict(adapters)

    def adapter_parameter_names(self) -> list[str]:
        """Full names of the adapter parameters (empty without adapters)."""
        return [] if self._adapters is None else adapter_parameter_names(self.backbone, self._adapters["method"])

    def merge_adapters(self) -> "TransferModel":
        """Fold the adapters into the base layers, in place: the same function (allclose) with the original
        layer names, so the model saves as a plain bundle and exports like any model. Returns the model."""
        if self._adapters is not None:
            self.spec, renamed = merge_adapters(self.backbone, self.spec, self._adapters["method"])
            self._keep_eval = tuple(dict.fromkeys(k for k in map(renamed, self._keep_eval) if k))
            self._adapters = None
        return self

    def set_decision(self, positive: int, threshold: float) -> None:
        """Predict class `positive` of a binary head when its probability reaches `threshold` (chosen on
        validation data for the positive class's F1), instead of by argmax; saved in the bundle."""
        if self.num_outputs != 2 or positive not in (0, 1) or not 0.0 <= threshold <= 1.0:
            raise HeadstartError(f"a decision threshold needs a binary head, a positive class 0 or 1 and a "
                                 f"threshold in [0, 1]; received {self.num_outputs} outputs, {positive}, {threshold}")
        self.decision = {"positive": int(positive), "threshold": float(threshold)}

    def describe(self) -> dict[str, Any]:
        """What a bundle needs to rebuild this model without its weights."""
        extra = {"extra_heads": {k: dict(v) for k, v in self.extra_heads.items()}} if self.extra_heads else {}
        extra |= {"decision": dict(self.decision)} if self.decision else {}
        extra |= {"main_task": self.main_task} if self.main_task else {}
        return {"backbone": self.spec.to_dict(), "head": dict(self.head_args), "task": self.task,
                "labels": list(self.labels), **extra}


def create_model(backbone: str | nn.Module, num_classes: int | None = None, *, weights: str | None = None,
                 labels: list[str] | None = None, head: str = "linear", hidden: int = 512, dropout: float = 0.0,
                 task: str = "classification", image_size: int | None = None,
                 preprocessing: ImagePreprocessing | None = None, max_length: int | None = None,
                 pooling: str | None = None, normalize: bool | None = None) -> TransferModel:
    """A pretrained backbone with a new head.

    Args:
        backbone: a registered name (``timm:resnet50``, ``torchvision:vgg16``, ``toy:cnn``) or any nn.Module.
        num_classes: outputs of the head; may be left out and set from the data by `fit`.
        weights: ``package:efficientnet-lite0``, a local ``.safetensors``/``.pth`` file, ``hub``, or None.
        task: ``classification`` (cross-entropy), ``multilabel`` (a sigmoid per class, binary cross-entropy)
            or ``regression`` (num_classes = number of targets).
        image_size: override the weights' input size (e.g. smaller for small images, faster on CPU).
        max_length, pooling, normalize: for text backbones (``hf:...``): tokens kept per text; ``cls``,
            ``mean``, ``max`` or ``pooler``; L2-normalise the embedding (scaled to norm sqrt(F); default: as
            the model's own pipeline does).

    Example:
        model = hs.create_model("timm:tf_efficientnet_lite0", 10, weights="package:efficientnet-lite0")
    """
    if isinstance(backbone, nn.Module):
        module, spec = wrap_module(backbone, preprocessing)
    else:
        text_options = {k: v for k, v in (("max_length", max_length), ("pooling", pooling), ("normalize", normalize))
                        if v is not None}
        if text_options and split_name(backbone)[0] != "hf":
            raise HeadstartError(f"{', '.join(text_options)} apply to text backbones (hf:<folder or hub id>); "
                                 f"{backbone!r} is not one. Leave them out.")
        module, spec = create_backbone(backbone, weights=weights, **text_options)
        if preprocessing is not None:
            spec.preprocessing = preprocessing
    if image_size is not None and spec.modality != "image":
        raise HeadstartError(f"image_size applies to image backbones; {spec.source} takes {spec.modality}. For "
                             "text, max_length sets how many tokens each text keeps.")
    if image_size is not None and spec.preprocessing is not None:
        spec.preprocessing = spec.preprocessing.with_size(image_size)
    return TransferModel(module, spec, head, num_classes, labels, task, dropout, hidden)
