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
from .data.images import to_8_bit
from .data import (IMAGE_EXTENSIONS, DataSplits, ImageData, TextData, images_to_uint8, load_image_files,
                   make_batcher)
from .errors import DataError
from .export import exported_format, load_exported
from .metrics import compute_metrics, default_metrics
from .model import TransferModel
from .run.loop import evaluate_tasks
from .runtime import inference_placement, predict_outputs, task_outputs


class UnreadableFilesError(DataError):
    """More of the input image files than allowed cannot be decoded."""


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

    @property
    def tasks(self) -> list[str] | None:
        """The task names of a multi-task model (its heads), or None for a single-task one."""
        return list(self.model.head_tasks()) if self.model.extra_heads else None

    @staticmethod
    def image_paths(path: str | os.PathLike) -> list[str]:
        """A file as itself, a folder as the image files under it (sorted)."""
        path = Path(path)
        if not path.is_dir():
            return [str(path)]
        found = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            others = sorted({p.suffix.lower() or "no extension" for p in path.rglob("*") if p.is_file()})
            held = f"it holds only {', '.join(others[:8])} files" if others else "it is empty"
            raise DataError(f"no image files in {str(path)!r}: {held} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return found

    def _images(self, inputs: Any) -> torch.Tensor:
        """Decode paths / a folder / arrays / PIL images into uint8 (N, C, H, W)."""
        if isinstance(inputs, (str, os.PathLike)):
            inputs = self.image_paths(inputs)
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            arr = inputs if inputs.ndim != 2 and not (inputs.ndim == 3 and inputs.shape[-1] in (1, 3)) \
                else inputs[None]  # a single image
            return images_to_uint8(arr, "inputs")
        if isinstance(inputs, Sequence) and inputs and all(isinstance(p, (str, os.PathLike)) for p in inputs):
            try:
                return self._read_files([str(p) for p in inputs], max_bad_fraction=0.0)[0]
            except UnreadableFilesError as e:
                raise UnreadableFilesError(f"{e} predict() and predict_proba() need every file, so that their "
                                           "results line up with the inputs; predict_files(paths, "
                                           "max_bad_fraction=0.1) skips unreadable files.") from None
        if isinstance(inputs, Sequence) and inputs and hasattr(inputs[0], "convert"):  # PIL images
            # Decoded as files are: a 16-bit image is scaled to 8 bits, not clipped to white.
            return images_to_uint8(np.stack([np.asarray(to_8_bit(im)[0].convert("RGB")) for im in inputs]), "inputs")
        raise DataError(f"cannot predict on {type(inputs).__name__}; give image paths, a folder, a numpy/torch "
                        "array (N, H, W[, C]) or a list of PIL images")

    def _read_files(self, paths: list[str], max_bad_fraction: float) -> tuple[torch.Tensor, list[str]]:
        """Decode image files into uint8 (N, C, S, S); returns them and the paths read, in order."""
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise DataError(f"{len(missing)} input file(s) do not exist, e.g. {missing[:3]}")
        others = [p for p in paths if Path(p).suffix.lower() not in IMAGE_EXTENSIONS]
        if others:
            raise DataError(f"{str(others[0])!r} is not an image file ({Path(others[0]).suffix or 'no extension'}"
                            f"{f', and {len(others) - 1} more' if len(others) > 1 else ''}); an image model predicts "
                            f"on {', '.join(IMAGE_EXTENSIONS)} files or folders of them")
        pre = self.model.spec.preprocessing
        stored = math.ceil(max(pre.image_size) / pre.crop_pct)
        try:
            images, kept = load_image_files(paths, stored, max_bad_fraction=max_bad_fraction)
        except DataError as e:  # the files exist and the size is valid, so: too many cannot be decoded
            raise UnreadableFilesError(str(e)) from None
        return images, [paths[i] for i in kept]

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

    def predict_proba(self, inputs: Any) -> np.ndarray | dict[str, np.ndarray]:
        """Class probabilities (N, num_classes), independent per class for multi-label models; regression
        models return their outputs. Inputs: images (paths, a folder, arrays) or, for text models, texts.
        A multi-task model gives {task: that array} for every task."""
        if self.model.spec.modality == "text":
            texts = self._texts(inputs)
            # Placeholder float targets: TextData needs targets, prediction never reads them.
            return self._probabilities(TextData(texts, torch.zeros(len(texts)), list(self.labels)))
        return self._probabilities(self._image_data(self._images(inputs)))

    def _image_data(self, images: torch.Tensor) -> ImageData:
        return ImageData(images, torch.zeros(len(images), dtype=torch.long), list(self.labels))  # targets unused

    def _probabilities(self, data: ImageData | TextData) -> np.ndarray | dict[str, np.ndarray]:
        batcher = make_batcher(data, self.model.spec, train=False)
        if self.tasks is None:
            return _activate(predict_outputs(self.model, batcher, **self._kwargs), self.model.task)
        heads = self.model.head_tasks()
        outs = task_outputs(self.model, batcher, {n: h["num_outputs"] for n, h in heads.items()}, **self._kwargs)
        return {n: _activate(outs[n], heads[n]["task"]) for n in heads}

    def predict(self, inputs: Any, threshold: float = 0.5) -> list:
        """(label, probability) of the most likely class for each input, in order. Multi-label models give
        each input's list of (label, probability) at or above `threshold`, most likely first.

        Example:
            hs.load("runs/fmnist").predict(["shoe.png"])              # [("Sneaker", 0.97)]
            hs.load("runs/news").predict(["Shares fell sharply ..."])  # [("business", 0.99)]
        """
        return self._predictions(self.predict_proba(inputs), threshold)

    def predict_files(self, paths: str | os.PathLike | Sequence[str | os.PathLike], threshold: float = 0.5,
                      max_bad_fraction: float = 0.1) -> tuple[list[str], list]:
        """Predict on image files and folders, skipping unreadable files with a warning.

        `predict` fails on any unreadable file, so that its results line up with its inputs; this skips up to
        `max_bad_fraction` of the files, as training on an image folder does, and returns the paths it read.

        Returns:
            (the paths read, in order; their predictions, as `predict` gives them)
        Raises:
            UnreadableFilesError: more than `max_bad_fraction` of the files cannot be decoded.

        Example:
            paths, preds = hs.load("runs/pets").predict_files("photos/")
        """
        if self.model.spec.modality == "text":
            raise DataError("predict_files() reads image files, and this is a text model: read the texts with "
                            "read_texts(path) and pass them to predict().")
        if isinstance(max_bad_fraction, bool) or not isinstance(max_bad_fraction, (int, float)) \
                or not 0 <= max_bad_fraction < 1:
            raise DataError(f"max_bad_fraction must be a number from 0 up to (not including) 1, the share of files "
                            f"that may be unreadable; got {max_bad_fraction!r}. The default is 0.1.")
        listed = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not listed:
            raise DataError("predict_files() got no paths; give image files or folders.")
        images, read = self._read_files([f for p in listed for f in self.image_paths(p)], max_bad_fraction)
        return read, self._predictions(self._probabilities(self._image_data(images)), threshold)

    def _predictions(self, probs: np.ndarray | dict[str, np.ndarray], threshold: float) -> list | dict[str, list]:
        """Top (label, probability) per row; for multi-label models, every label at or above `threshold`. A
        multi-task model gives {task: its predictions}, a regression task its values."""
        if isinstance(probs, dict):
            heads = self.model.head_tasks()
            return {n: (p.tolist() if heads[n]["task"] == "regression" else
                        _labelled(p, heads[n]["task"], heads[n]["labels"], threshold,
                                  self.model.decision if n == self.model.main_name else None))
                    for n, p in probs.items()}
        if self.model.task != "classification" and self.model.task != "multilabel":
            raise DataError("predict() gives labels for classifiers; use predict_proba() for regression outputs")
        return _labelled(probs, self.model.task, self.labels, threshold, self.model.decision)

    def evaluate(self, data: DataSplits | ImageData | TextData, split: str = "test",
                 name: str | None = None) -> dict[str, float]:
        """Metrics on labelled data whose classes must be the model's classes, named ``<name or split>/<metric>``
        (`split` picks the part of a DataSplits; a single part is evaluated whole). A multi-task model is
        scored on every task of multi-task data: ``<name or split>/<task>/<metric>``."""
        part = getattr(data, split) if isinstance(data, DataSplits) else data
        if part is None:
            raise DataError(f"the data has no {split!r} split; choose one of train, val, test that exists")
        if self.tasks is not None or isinstance(part.targets, dict):
            return self._evaluate_tasks(part, name or split)
        if self.model.task in ("classification", "multilabel"):
            part = align_labels(part, self.labels)
        out = predict_outputs(self.model, make_batcher(part, self.model.spec, train=False), **self._kwargs)
        names, decision = default_metrics(self.model.task, out.shape[1]), self.model.decision or {}
        names += ["f1"] if decision else []  # the F1 of the positive class, at the saved threshold
        return compute_metrics(out, part.targets, names, f"{name or split}/", **decision)

    def _evaluate_tasks(self, part, prefix: str) -> dict[str, float]:
        heads = self.model.head_tasks()
        if self.tasks is None or not isinstance(part.targets, dict):
            raise DataError(f"a multi-task model is evaluated on multi-task data and the other way round; the model "
                            f"has tasks {self.tasks}, the data {list(part.targets) if isinstance(part.targets, dict) else None}")
        if list(part.targets) != list(heads):
            raise DataError(f"the data's tasks {list(part.targets)} are not the model's {list(heads)}")
        for t in part.tasks:
            if heads[t.name]["task"] != "regression" and list(t.classes) != list(heads[t.name]["labels"]):
                raise DataError(f"task {t.name!r}: the data's classes {list(t.classes)[:10]} are not the model's "
                                f"{heads[t.name]['labels'][:10]} (same names, same order)")
        return evaluate_tasks(self.model, make_batcher(part, self.model.spec, train=False), heads, prefix,
                              **self._kwargs)


def _activate(out: torch.Tensor, task: str) -> np.ndarray:
    """Probabilities of a classifier's (softmax) or multi-label head's (sigmoid) outputs; regression as is."""
    if task == "multilabel":
        return out.sigmoid().numpy()
    return (out.softmax(1) if task == "classification" else out).numpy()


def _labelled(probs: np.ndarray, task: str, labels: list[str], threshold: float, decision: dict | None) -> list:
    """Top (label, probability) per row, or every label at or above `threshold` for a multi-label head."""
    if task == "multilabel":
        return [[(labels[i], float(p[i])) for i in np.argsort(-p, kind="stable") if p[i] >= threshold]
                for p in probs]
    if decision:  # a binary head with a threshold chosen on validation data (train.metric f1)
        pos, t = decision["positive"], decision["threshold"]
        picks = np.where(probs[:, pos] >= t, pos, 1 - pos)
    else:
        picks = probs.argmax(1)
    return [(labels[i], float(p[i])) for i, p in zip(picks, probs)]


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
    """Load a run folder or bundle for inference. See `bundle.load_model` for the arguments.

    A file written by `headstart export` (.onnx, or TorchScript) loads too: it runs through onnxruntime or
    torch.jit with the same preprocessing, predict/predict_proba/predict_files and evaluate."""
    if exported_format(path) is not None:
        exported = load_exported(path)
        predictor = Predictor(exported, **{"precision": "fp32", **kwargs})  # the file fixes its own precision
        predictor.columns = exported.columns
        return predictor
    predictor = Predictor(load_model(path, module=module, num_classes=num_classes), **kwargs)
    predictor.columns = read_meta(path).get("data")
    return predictor


def evaluate(path_or_model: str | Path | TransferModel, data: DataSplits | ImageData, split: str = "test"
             ) -> dict[str, float]:
    """Metrics of a run folder, bundle or model on a split of `data`."""
    model = path_or_model if isinstance(path_or_model, TransferModel) else load_model(path_or_model)
    return Predictor(model).evaluate(data, split)
