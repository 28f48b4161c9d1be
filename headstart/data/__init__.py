"""Data: in-memory image and text sets, folder, array and table-file loaders, batch transforms, batch order, named data sets."""
from .batches import epoch_permutation, iterate_batches, num_batches
from .datasets import DATASETS, FASHION_MNIST_CLASSES, list_datasets, load
from .splits import DataSplits, Split, with_target
from .images import (IMAGE_EXTENSIONS, ImageData, from_arrays, image_folder, images_to_uint8,
                     load_image_files, stratified_split, subsample_per_class)
from .transforms import BatchTransform
from .batcher import BATCHERS, Batch, FeatureBatcher, FeatureData, TwoStreamBatcher, make_batcher
from .text import (TextBatcher, TextData, from_texts, is_text_file, read_records, read_texts,  # noqa: E402
                   text_file)
from .tasks import MultiTaskSplit, Task, combine_tasks, derive_tasks, single_task, table_tasks  # noqa: E402
from .store import ImageStore, default_store_dir, open_store  # noqa: E402  (registers the disk image store)

__all__ = [
    "ImageStore",
    "default_store_dir",
    "open_store",
    "MultiTaskSplit",
    "Task",
    "combine_tasks",
    "derive_tasks",
    "single_task",
    "table_tasks",
    "with_target",
    "BATCHERS",
    "Batch",
    "FeatureBatcher",
    "FeatureData",
    "Split",
    "TwoStreamBatcher",
    "BatchTransform",
    "DATASETS",
    "DataSplits",
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "TextBatcher",
    "TextData",
    "epoch_permutation",
    "from_arrays",
    "from_texts",
    "image_folder",
    "images_to_uint8",
    "is_text_file",
    "iterate_batches",
    "list_datasets",
    "load",
    "load_image_files",
    "make_batcher",
    "num_batches",
    "read_records",
    "read_texts",
    "stratified_split",
    "subsample_per_class",
    "text_file",
]
