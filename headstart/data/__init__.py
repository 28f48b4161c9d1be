"""Data: in-memory image sets, folder and array loaders, batch transforms, batch order, named data sets."""
from .batches import epoch_permutation, iterate_batches, num_batches
from .datasets import DATASETS, FASHION_MNIST_CLASSES, list_datasets, load
from .images import (IMAGE_EXTENSIONS, DataSplits, ImageData, from_arrays, image_folder, images_to_uint8,
                     load_image_files, stratified_split, subsample_per_class)
from .transforms import BatchTransform
from .batcher import BATCHERS, make_batcher  # noqa: E402  (after the data types it dispatches on)

__all__ = [
    "BATCHERS",
    "BatchTransform",
    "DATASETS",
    "DataSplits",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "epoch_permutation",
    "from_arrays",
    "image_folder",
    "images_to_uint8",
    "iterate_batches",
    "list_datasets",
    "load",
    "load_image_files",
    "make_batcher",
    "num_batches",
    "stratified_split",
    "subsample_per_class",
]
