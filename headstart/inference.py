"""Using a trained model: `load` a bundle, `predict` labels and probabilities, `evaluate` on labelled data."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .bundle import load_model, read_meta
from .data import (IMAGE_EXTENSIONS, DataSplits, ImageData, TextData, images_to_uint8, load_image_files,
                   make_batcher)
from .errors import DataError
from .metrics import compute_metrics, default_metrics
from .model import TransferModel
from .runtime import inference_placement, predict_outputs


class Predictor:
    """A trained model ready for inference, with its labels and preprocessing attached."""

    def __init__(self, model: TransferModel, batch_size: int = 64, precision: str = "auto"):
        self.model = model.eval()
        self.batch_size = batch_size
        self.columns: dict[str, Any] | None = None  # text models: the columns the training texts came from
        self._kwargs = dict(batch_size=batch_size, **inference_placement(model, precision).kwargs())

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @staticmethod
    def image_paths(path: str | os.PathLike) -> list[str]:
        """A file as itself, a folder as the image files under it (sorted)."""
        path = Path(path)
        if not path.is_dir():
            return [str(path)]
        found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(f"no image files in {str(path)!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return found

    def _images(self, inputs: Any) -> tuple[torch.Tensor, list[str] | None]:
        """Decode paths / a folder / arrays / PIL images into uint8 (N, C, H, W)."""
        if isinstance(inputs, (str, os.PathLike)):
            inputs = self.image_paths(inputs)
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            arr = inputs if inputs.ndim != 2 and not (inputs.ndim == 3 and inputs.shape[-1] in (1, 3)) \
                else inputs[None]  # a single image
            return images_to_uint8(arr, "inputs"), None
        if isinstance(inputs, Sequence) and inputs and all(isinstance(p, (str, os.PathLike)) for p in inputs):
            missing = [str(p) for p in inputs if not Path(p).is_file()]
            if missing:
                raise DataError(f"{len(missing)} input file(s) do not exist, e.g. {missing[:3]}")
            pre = self.model.spec.preprocessing
            stored = math.ceil(max(pre.image_size) / pre.crop_pct)
            images, kept = load_image_files([str(p) for p in inputs], stored, max_bad_fraction=0.0)
            return images, [str(inputs[i]) for i in kept]
        if isinstance(inputs, Sequence) and inputs and hasattr(inputs[0], "convert"):  # PIL images
            return images_to_uint8(np.stack([np.asarray(im.convert("RGB")) for im in inputs]), "inputs"), None
        raise DataError(f"cannot predict on {type(inputs).__name__}; give image paths, a folder, a numpy/torch "
                        "array (N, H, W[, C]) or a list of PIL images")

    @staticmethod
    def _texts(inputs: Any) -> list:
        """One text, or a sequence of texts or (text, text) pairs, as a list."""
        if isinstance(inputs, str):
            return [inputs]
        if isinstance(inputs, Sequence) and inputs and all(
                isinstance(t, str) or (isinstance(t, (tuple, list)) and len(t) == 2) for t in inputs):
            return [tuple(t) if isinstance(t, list) else t for t in inputs]
        raise DataError(f"a text model predicts on a text or a list of texts (or of (text, text) pairs), got "
                        f"{type(inputs).__name__}. To predict on a file: headstart predict RUN texts.csv.")

    def read_texts(self, path: str | os.PathLike, text_column: str | Sequence[str] | None = None) -> list:
        """Texts from a table file, in the columns the model was trained on unless `text_column` is given."""
        from .data import read_texts

        cols = self.columns or {}
        return read_texts(path, text_column or cols.get("text_columns") or "text",
                          text_pair=bool(cols.get("text_pair")) and text_column is None)

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """Class probabilities (N, num_classes), independent per class for multi-label models; regression
        models return their outputs. Inputs: images (paths, a folder, arrays) or, for text models, texts."""
        if self.model.spec.modality == "text":
            texts = self._texts(inputs)
            # Placeholder float targets: TextData needs targets, prediction never reads them.
            data: Any = TextData(texts, torch.zeros(len(texts)), list(self.labels))
        else:
            images, _ = self._images(inputs)
            data = ImageData(images, torch.zeros(len(images), dtype=torch.long), list(self.labels))
        out = predict_outputs(self.model, make_batcher(data, self.model.spec, train=False), **self._kwargs)
        if self.model.task == "multilabel":
            return out.sigmoid().numpy()
        return (out.softmax(1) if self.model.task == "classification" else out).numpy()

    def predict(self, inputs: Any, threshold: float = 0.5) -> list:
        """(label, probability) of the most likely class for each input, in order. Multi-label models give
        each input's list of (label, probability) at or above `threshold`, most likely first.

        Example:
            hs.load("runs/fmnist").predict(["shoe.png"])              # [("Sneaker", 0.97)]
            hs.load("runs/news").predict(["Shares fell sharply ..."])  # [("business", 0.99)]
        """
        probs = self.predict_proba(inputs)
        if self.model.task == "multilabel":
            return [[(self.labels[i], float(p[i])) for i in np.argsort(-p, kind="stable") if p[i] >= threshold]
                    for p in probs]
        if self.model.task != "classification":
            raise DataError("predict() gives labels for classifiers; use predict_proba() for regression outputs")
        return [(self.labels[i], float(p[i])) for i, p in zip(probs.argmax(1), probs)]

    def evaluate(self, data: DataSplits | ImageData | TextData, split: str = "test") -> dict[str, float]:
        """Metrics on labelled data whose classes must be the model's classes."""
        part = getattr(data, split) if isinstance(data, DataSplits) else data
        if part is None:
            raise DataError(f"the data has no {split!r} split; choose one of train, val, test that exists")
        if self.model.task in ("classification", "multilabel"):
            part = align_labels(part, self.labels)
        out = predict_outputs(self.model, make_batcher(part, self.model.spec, train=False), **self._kwargs)
        return compute_metrics(out, part.targets, default_metrics(self.model.task, out.shape[1]), f"{split}/")


def align_labels(data: ImageData | TextData, labels: list[str]) -> ImageData | TextData:
    """Re-index `data`'s targets to the model's label order; labels the model never saw are an error."""
    if list(data.classes) == list(labels):
        return data
    multi = data.targets.ndim == 2  # multi-hot columns, one per class
    present = ([c for j, c in enumerate(data.classes) if bool(data.targets[:, j].any())] if multi
               else [data.classes[i] for i in data.targets.unique().tolist()])
    unknown = sorted(set(present) - set(labels))
    if unknown:
        raise DataError(f"the data has classes the model was not trained on: {unknown[:10]}. The model knows "
                        f"{labels[:20]}. Evaluate on data with those classes, or fine-tune a new head.")
    if multi:
        targets = torch.zeros(len(data), len(labels), dtype=data.targets.dtype)
        for j, c in enumerate(data.classes):
            if c in labels:
                targets[:, labels.index(c)] = data.targets[:, j]
    else:
        targets = torch.tensor([labels.index(c) if c in labels else -1 for c in data.classes])[data.targets]
    return dataclasses.replace(data, targets=targets, classes=list(labels))


def load(path: str | Path, module: nn.Module | None = None, num_classes: int | None = None, **kwargs) -> Predictor:
    """Load a run folder or bundle for inference. See `bundle.load_model` for the arguments."""
    predictor = Predictor(load_model(path, module=module, num_classes=num_classes), **kwargs)
    predictor.columns = read_meta(path).get("data")
    return predictor


def evaluate(path_or_model: str | Path | TransferModel, data: DataSplits | ImageData, split: str = "test"
             ) -> dict[str, float]:
    """Metrics of a run folder, bundle or model on a split of `data`."""
    model = path_or_model if isinstance(path_or_model, TransferModel) else load_model(path_or_model)
    return Predictor(model).evaluate(data, split)
