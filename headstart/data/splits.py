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


def with_target(data: DataSplits, target) -> DataSplits:
    """`data` (the labelled source domain) with unlabeled target-domain inputs beside it, for domain adaptation.

    `target` is a split or a DataSplits (its training part is used). Its labels, when it has the source's
    classes, are kept for reporting only (``target/accuracy``: nothing trains or chooses with them).
    """
    part = target.train if isinstance(target, DataSplits) else target
    if part is None or len(part) == 0:
        raise DataError("the target data is empty; domain adaptation needs unlabeled target inputs (a folder, a "
                        "table or a built-in data set with at least one batch of them)")
    modality = target.modality if isinstance(target, DataSplits) else part.modality
    if modality != data.modality:
        raise DataError(f"the target data holds {modality} inputs and the source {data.modality}: one backbone "
                        "reads one modality. Give target data of the source's kind.")
    return DataSplits(data.train, data.val, data.test, data.classes, data.name, data.modality, unlabeled=part)
