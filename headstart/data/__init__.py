"""Data: in-memory image sets, folder and array loaders, batch transforms, batch order, named data sets."""
from .batches import epoch_permutation, iterate_batches, num_batches
from .datasets import DATASETS, FASHION_MNIST_CLASSES, list_datasets, load
from .images import (IMAGE_EXTENSIONS, DataSplits, ImageData, from_arrays, image_folder, load_image_files,
                     stratified_split, subsample_per_class)
from .transforms import BatchTransform

__all__ = [
    "BatchTransform",
    "DATASETS",
    "DataSplits",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "epoch_permutation",
    "from_arrays",
    "image_folder",
    "iterate_batches",
    "list_datasets",
    "load",
    "load_image_files",
    "num_batches",
    "stratified_split",
    "subsample_per_class",
]
