"""The split protocol every modality shares, and DataSplits: the parts of one data set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import DataError


class Labelled:
    """What every labelled split knows of its targets, whatever its inputs: (N,) int64 class indices, (N, K)
    multi-hot rows (multi-label) or (N,) float values (regression). Mixed into ImageData and TextData."""

    targets: Any
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multi_label(self) -> bool:
        return self.targets.ndim == 2

    @property
    def is_regression(self) -> bool:
        return self.targets.ndim == 1 and self.targets.is_floating_point()

    def class_counts(self) -> torch.Tensor:
        """Samples per class, (num_classes,) int64 (for multi-label: samples carrying each label)."""
        if self.is_regression:
            raise DataError("class_counts() needs class targets, but this data has float (regression) targets.")
        if self.multi_label:
            return self.targets.sum(0).round().long()
        return torch.bincount(self.targets.cpu(), minlength=len(self.classes))


class Split(Protocol):
    """One part of a data set, whatever its modality (images, texts, feature rows).

    `targets` is (N,) int64 class indices, (N, K) multi-hot or float regression targets; `modality` picks its
    batcher (`data.batcher.BATCHERS`).
    """

    modality: str
    targets: Any
    classes: list[str]

    def __len__(self) -> int: ...


@dataclass
class DataSplits:
    """The train / val / test parts of one data set and the class names they share.

    `unlabeled` is an optional split without labels (domain adaptation's target domain): the loop pairs each
    training batch with a batch of it (`data.batcher.TwoStreamBatcher`).
    """

    train: Split
    val: Split | None
    test: Split | None
    classes: list[str]
    name: str
    modality: str = "image"
    unlabeled: Split | None = None

    def __post_init__(self) -> None:
        for part_name, part in (("train", self.train), ("val", self.val), ("test", self.test)):
            if part is not None and list(part.classes) != list(self.classes):
                raise DataError(f"the {part_name} part of data set {self.name!r} has classes {part.classes[:10]}, "
                                f"but the data set's classes are {self.classes[:10]}; all parts must share "
                                f"the same class list (same names, same order).")
