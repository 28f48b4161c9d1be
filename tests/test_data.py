"""Tests for headstart.data: folders, arrays, splits, batch transforms, batch order, named data sets."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.backbones.spec import ImagePreprocessing
from headstart.data import (BatchTransform, DataSplits, ImageData, from_arrays, image_folder, iterate_batches,
                            list_datasets, load, load_image_files, num_batches, stratified_split,
                            subsample_per_class)
from headstart.data.datasets import OPENCV_DIGITS_FILES
from headstart.errors import DataError
from headstart.registry import UnknownNameError

FASHION_DIR = Path(os.environ.get("HEADSTART_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def _write_png(path: Path, color: tuple[int, int, int] | int, size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if isinstance(color, int) else "RGB"
    Image.new(mode, size, color).save(path)


def _make_folder(root: Path, counts: dict[str, int], gray: bool = False) -> None:
    for ci, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            color = 40 * ci + i if gray else (40 * ci, i, 255 - i)
            _write_png(root / cls / f"{i:03d}.png", color)


# ---------------------------------------------------------------------------------------------------------
# image_folder / load_image_files


def test_image_folder_loads_classes_and_splits_stratified(tmp_path):
    _make_folder(tmp_path / "pets", {"dog": 10, "cat": 20, "bird": 5})
    splits = image_folder(tmp_path / "pets", val_fraction=0.2, seed=3, stored_size=12)
    assert isinstance(splits, DataSplits)
    assert splits.classes == ["bird", "cat", "dog"]
    assert splits.name == "pets"
    assert splits.test is None
    assert splits.train.images.dtype == torch.uint8
    assert splits.train.images.shape[1:] == (3, 12, 12)
    assert splits.val.class_counts().tolist() == [1, 4, 2]  # round(0.2 * n) per class
    assert splits.train.class_counts().tolist() == [4, 16, 8]
    # each image's label matches its folder, and the pixels match what was written (red = 40 * write order)
    for data in (splits.train, splits.val):
        for img, target, path in zip(data.images, data.targets, data.paths):
            assert Path(path).parent.name == splits.classes[target]
            assert img[0, 6, 6].item() == 40 * ["dog", "cat", "bird"].index(Path(path).parent.name)
    # the same seed gives the same split, another seed another one
    again = image_folder(tmp_path / "pets", val_fraction=0.2, seed=3, stored_size=12)
    assert again.val.paths == splits.val.paths
    assert again.train.fingerprint() == splits.train.fingerprint()
    other = image_folder(tmp_path / "pets", val_fraction=0.2, seed=4, stored_size=12)
    assert other.val.paths != splits.val.paths
    assert set(splits.train.paths).isdisjoint(splits.val.paths)


def test_image_folder_gray_stays_one_channel_and_val_test_folders(tmp_path):
    _make_folder(tmp_path / "train", {"a": 3, "b": 3}, gray=True)
    _make_folder(tmp_path / "val", {"a": 2, "b": 1}, gray=True)
    _make_folder(tmp_path / "test", {"a": 1, "b": 1})  # RGB
    splits = image_folder(tmp_path / "train", val=tmp_path / "val", test=tmp_path / "test", stored_size=8)
    assert splits.train.images.shape == (6, 1, 8, 8)
    assert splits.val.images.shape == (3, 1, 8, 8)
    assert splits.test.images.shape == (2, 3, 8, 8)
    assert splits.val.targets.tolist() == [0, 0, 1]


def test_load_image_files_resizes_shorter_side_and_centre_crops(tmp_path):
    # 40x20 image: left quarter red, the rest blue; after resize to 10 and centre crop, all blue but the edges
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))
    img.save(tmp_path / "wide.png")
    _write_png(tmp_path / "gray.png", 128, size=(10, 10))
    images, kept = load_image_files([str(tmp_path / "wide.png"), str(tmp_path / "gray.png")], stored_size=10)
    assert kept == [0, 1]
    assert images.shape == (2, 3, 10, 10)  # one RGB image makes them all RGB
    assert images[0, :, 5, 5].tolist() == [0, 0, 255]
    assert images[1, :, 5, 5].tolist() == [128, 128, 128]


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        image_folder(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        image_folder(tmp_path / "file.txt")
    _write_png(tmp_path / "flat" / "x.png", 1)
    with pytest.raises(DataError, match="no class subfolders"):
        image_folder(tmp_path / "flat")
    _make_folder(tmp_path / "ds", {"a": 2})
    (tmp_path / "ds" / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class"):
        image_folder(tmp_path / "ds")
    _make_folder(tmp_path / "tr", {"a": 2, "b": 2})
    _make_folder(tmp_path / "va", {"a": 2, "c": 2})
    with pytest.raises(DataError, match=r"missing \['b'\].*not in training \['c'\]"):
        image_folder(tmp_path / "tr", val=tmp_path / "va")


def test_corrupt_image_skipped_with_warning(tmp_path):
    _make_folder(tmp_path / "ds", {"a": 10, "b": 10})
    bad = tmp_path / "ds" / "a" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="broken.png"):
        splits = image_folder(tmp_path / "ds", val_fraction=0.0, stored_size=8)
    assert len(splits.train) == 20
    assert splits.val is None
    assert not any("broken" in p for p in splits.train.paths)


def test_too_many_corrupt_images_raise(tmp_path):
    _make_folder(tmp_path / "ds", {"a": 3, "b": 3})
    for i in range(2):
        (tmp_path / "ds" / "a" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warnings when the load fails as a whole
        with pytest.raises(DataError, match="bad0.jpg"):
            image_folder(tmp_path / "ds", stored_size=8)


# ---------------------------------------------------------------------------------------------------------
# splits and subsets


def test_stratified_split_rules():
    targets = torch.tensor([0] * 10 + [1] * 3 + [2] * 1 + [3] * 2)
    keep, held = stratified_split(targets, 0.1, seed=0)
    counts = torch.bincount(targets[held], minlength=4).tolist()
    assert counts == [1, 1, 0, 1]  # at least one per class with >= 2 samples; a singleton stays in keep
    assert sorted(keep.tolist() + held.tolist()) == list(range(len(targets)))
    k2, h2 = stratified_split(targets, 0.1, seed=0)
    assert torch.equal(keep, k2) and torch.equal(held, h2)
    with pytest.raises(DataError, match="1.5"):
        stratified_split(targets, 1.5, seed=0)


def test_subsample_per_class():
    data = ImageData(torch.zeros(30, 1, 2, 2, dtype=torch.uint8), torch.tensor([0] * 20 + [1] * 10),
                     ["a", "b"])
    small = subsample_per_class(data, per_class=4, fraction=None, seed=1)
    assert small.class_counts().tolist() == [4, 4]
    assert torch.equal(subsample_per_class(data, 4, None, 1).targets, small.targets)
    half = subsample_per_class(data, None, 0.5, seed=1)
    assert half.class_counts().tolist() == [10, 5]
    with pytest.raises(DataError, match="not both"):
        subsample_per_class(data, 4, 0.5, 0)


# ---------------------------------------------------------------------------------------------------------
# from_arrays


@pytest.mark.parametrize("shape,layout", [((12, 5, 6), "nhw"), ((12, 5, 6, 3), "nhwc"), ((12, 3, 5, 6), "nchw"),
                                          ((12, 5, 6, 1), "nhwc"), ((12, 1, 5, 6), "nchw")])
def test_from_arrays_layouts(shape, layout):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=shape, dtype=np.uint8)
    y = np.arange(12) % 3
    splits = from_arrays(x, y, val_fraction=0.25, seed=0)
    c = 1 if len(shape) == 3 else (shape[-1] if layout == "nhwc" else shape[1])
    assert splits.train.images.shape[1:] == (c, 5, 6)
    assert splits.classes == ["0", "1", "2"]
    assert len(splits.train) + len(splits.val) == 12
    # pixel content survives the layout change
    full = from_arrays(x, y, val_fraction=0.0)
    expected = torch.from_numpy(x if layout == "nchw" else (x[:, None] if layout == "nhw" else
                                                              x.transpose(0, 3, 1, 2)))
    assert torch.equal(full.train.images, expected)


def test_from_arrays_floats_strings_and_torch():
    x = torch.full((4, 2, 2), 0.5)
    splits = from_arrays(x, ["dog", "cat", "dog", "cat"], val_fraction=0.0)
    assert splits.classes == ["cat", "dog"]
    assert splits.train.targets.tolist() == [1, 0, 1, 0]
    assert splits.train.images.unique().tolist() == [128]  # [0, 1] floats scaled to 0..255
    big = from_arrays(np.full((2, 2, 2), 200.0), [0, 1], val_fraction=0.0)
    assert big.train.images.unique().tolist() == [200]
    reg = from_arrays(np.zeros((4, 3, 3), np.uint8), np.array([0.5, 1.5, 2.0, 3.0]), val_fraction=0.0)
    assert reg.classes == [] and reg.train.targets.dtype == torch.float32
    given = from_arrays(np.zeros((3, 3, 3), np.uint8), [0, 0, 1], classes=["x", "y", "z"],
                        x_val=np.zeros((1, 3, 3), np.uint8), y_val=[2])
    assert given.classes == ["x", "y", "z"] and given.val.targets.tolist() == [2]


def test_from_arrays_errors():
    x = np.zeros((4, 5, 5), np.uint8)
    with pytest.raises(DataError, match="3 labels but there are 4 images"):
        from_arrays(x, [0, 1, 0])
    with pytest.raises(DataError, match=r"shape \(4, 25\)"):
        from_arrays(x.reshape(4, 25), [0, 1, 0, 1])
    with pytest.raises(DataError, match=r"shape \(4, 5, 5, 5\)"):
        from_arrays(np.zeros((4, 5, 5, 5), np.uint8), [0, 1, 0, 1])
    with pytest.raises(DataError, match="-1"):
        from_arrays(np.full((4, 5, 5), -1.0), [0, 1, 0, 1])
    with pytest.raises(DataError, match="300"):
        from_arrays(np.full((4, 5, 5), 300.0), [0, 1, 0, 1])
    with pytest.raises(DataError, match="'horse'"):
        from_arrays(x, ["cat", "dog", "cat", "horse"], classes=["cat", "dog"])
    with pytest.raises(DataError, match="class index 5"):
        from_arrays(x, [0, 1, 0, 5], classes=["a", "b"])
    with pytest.raises(DataError, match="y_val"):
        from_arrays(x, [0, 1, 0, 1], x_val=x)
    with pytest.raises(DataError, match="image size"):
        from_arrays(x, [0, 1, 0, 1], x_val=np.zeros((2, 6, 6), np.uint8), y_val=[0, 1])


def test_image_data_validation():
    with pytest.raises(DataError, match="uint8"):
        ImageData(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(DataError, match="2 images but 3 targets"):
        ImageData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0]), ["a", "b"])
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        ImageData(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ["a", "b"])


def test_fingerprint_tracks_content():
    data = ImageData(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0]), ["a", "b"])
    fp = data.fingerprint()
    assert len(fp) == 64
    changed = ImageData(data.images.clone(), data.targets.clone(), ["a", "b"])
    changed.images[1, 0, 2, 2] = 1
    assert changed.fingerprint() != fp
    assert ImageData(data.images, torch.tensor([0, 1, 1]), ["a", "b"]).fingerprint() != fp
    assert ImageData(data.images, data.targets, ["a", "c"]).fingerprint() != fp
    assert ImageData(data.images.clone(), data.targets.clone(), ["a", "b"]).fingerprint() == fp


# ---------------------------------------------------------------------------------------------------------
# BatchTransform


PRE = ImagePreprocessing(input_size=(3, 32, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5),
                         interpolation="bilinear", crop_pct=0.875)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("channels,src", [(1, 28), (3, 64), (3, 37)])
def test_batch_transform_constant_image_normalised(train, interpolation, channels, src):
    pre = ImagePreprocessing(PRE.input_size, PRE.mean, PRE.std, interpolation, PRE.crop_pct)
    images = torch.full((4, channels, src, src), 102, dtype=torch.uint8)
    out = BatchTransform(pre, train=train)(images, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    expected = (102 / 255 - torch.tensor(PRE.mean)) / torch.tensor(PRE.std)
    assert torch.allclose(out, expected.view(1, 3, 1, 1).expand_as(out), atol=1e-4)


def test_batch_transform_gray_repeats_to_three_channels():
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    out = BatchTransform(PRE, train=False)(images)
    raw = out * torch.tensor(PRE.std).view(1, 3, 1, 1) + torch.tensor(PRE.mean).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 0], raw[:, 2], atol=1e-5)


def test_batch_transform_eval_crops_centre_of_larger_source():
    # 64x64 source, target 32 with crop_pct 0.5: resize to 64 (no-op), keep the centre 32x32 exactly
    pre = ImagePreprocessing((3, 32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "nearest", 0.5)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    out = BatchTransform(pre, train=True, augment=False)(images)
    assert torch.allclose(out * 255, images[:, :, 16:48, 16:48].float(), atol=1e-3)


def test_batch_transform_augmentation_seeded_and_geometric():
    # horizontal ramp: a crop + optional flip keeps each row monotonic, in one direction per sample
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8)
    images = ramp.view(1, 1, 1, 64).expand(16, 3, 64, 64).contiguous()
    transform = BatchTransform(PRE, train=True)
    a = transform(images, torch.Generator().manual_seed(1))
    b = transform(images, torch.Generator().manual_seed(1))
    c = transform(images, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    row = a[:, 0, 16]
    diffs = row[:, 1:] - row[:, :-1]
    increasing, decreasing = (diffs >= -1e-4).all(1), (diffs <= 1e-4).all(1)
    assert bool((increasing | decreasing).all())
    assert bool(increasing.any()) and bool(decreasing.any())  # both flip directions occur in 16 samples
    assert not torch.allclose(a[0], a[1])  # one crop per sample, not one per batch


def test_batch_transform_rejects_float_input():
    with pytest.raises(DataError, match="uint8"):
        BatchTransform(PRE, train=False)(torch.zeros(1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------------------
# iterate_batches


@pytest.mark.parametrize("n,bs", [(10, 3), (9, 3), (1, 4), (0, 2)])
def test_iterate_batches_covers_each_index_once(n, bs):
    batches = list(iterate_batches(n, bs, shuffle=True, seed=5, epoch=2))
    assert len(batches) == num_batches(n, bs)
    assert all(b.dtype == torch.int64 for b in batches)
    flat = torch.cat(batches).tolist() if batches else []
    assert sorted(flat) == list(range(n))


def test_iterate_batches_order_depends_on_seed_and_epoch_only():
    first = torch.cat(list(iterate_batches(50, 8, True, seed=1, epoch=3)))
    again = torch.cat(list(iterate_batches(50, 8, True, seed=1, epoch=3)))
    other_epoch = torch.cat(list(iterate_batches(50, 8, True, seed=1, epoch=4)))
    other_seed = torch.cat(list(iterate_batches(50, 8, True, seed=2, epoch=3)))
    assert torch.equal(first, again)
    assert not torch.equal(first, other_epoch) and not torch.equal(first, other_seed)
    assert torch.cat(list(iterate_batches(7, 3, False, 0, 0))).tolist() == list(range(7))
    dropped = list(iterate_batches(10, 3, True, 0, 0, drop_last=True))
    assert [len(b) for b in dropped] == [3, 3, 3] and num_batches(10, 3, drop_last=True) == 3


@pytest.mark.parametrize("n", [10, 11])
def test_iterate_batches_sharding(n):
    ranks = [list(iterate_batches(n, 2, True, seed=0, epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == num_batches(n, 2, world_size=2)
    idx = [torch.cat(b).tolist() for b in ranks]
    assert len(idx[0]) == len(idx[1])
    assert set(idx[0]) | set(idx[1]) == set(range(n))
    if n % 2 == 0:
        assert set(idx[0]).isdisjoint(idx[1])
    else:
        assert len(set(idx[0]) & set(idx[1])) == 1  # one index repeated to pad the odd sample count
    with pytest.raises(DataError, match="rank"):
        list(iterate_batches(n, 2, True, 0, 0, rank=2, world_size=2))


# ---------------------------------------------------------------------------------------------------------
# named data sets


def test_list_and_unknown_dataset():
    assert {"fashion-mnist", "digits"} <= set(list_datasets())
    assert list_datasets("dig*") == ["digits"]
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        load("fashion_mnist")


def test_digits_loads():
    splits = load("digits", seed=0)
    assert splits.classes == [str(i) for i in range(10)]
    assert splits.train.images.shape[1:] == (1, 8, 8) and splits.train.images.dtype == torch.uint8
    assert int(splits.train.images.max()) == 255
    total = len(splits.train) + len(splits.val) + len(splits.test)
    assert total == 1797
    assert 0.18 < len(splits.test) / total < 0.22
    small = load("digits", subset=5, seed=0)
    assert small.train.class_counts().tolist() == [5] * 10
    assert small.test.class_counts().tolist() == [5] * 10
    assert small.val.class_counts().tolist() == [1] * 10  # ceil(5 * 0.1 / 0.9)
    assert load("digits", subset=5, seed=0).train.fingerprint() == small.train.fingerprint()


def _digits_sheet(path: Path) -> None:
    """A 2000x1000 sheet like OpenCV's: the cell in grid row r, column c is filled with r, its corner pixel is c."""
    sheet = np.repeat(np.repeat(np.arange(50, dtype=np.uint8)[:, None], 20, axis=0), 2000, axis=1)
    sheet[::20, ::20] = np.arange(100, dtype=np.uint8)[None, :]
    Image.fromarray(sheet).save(path)


def test_opencv_digits_cuts_the_sheet_in_reading_order(tmp_path):
    _digits_sheet(tmp_path / "digits.png")
    splits = load("opencv-digits", root=tmp_path, seed=0)  # a folder holding digits.png
    parts = [splits.train, splits.val, splits.test]
    assert sum(len(p) for p in parts) == 5000 and splits.test.class_counts().tolist() == [100] * 10
    seen = set()
    for part in parts:
        x = part.images
        assert x.shape[1:] == (1, 20, 20) and x.dtype == torch.uint8
        rows, cols = x[:, 0, 1, 1].long(), x[:, 0, 0, 0].long()
        assert torch.equal(part.targets, rows // 5)  # five grid rows per class, 0 first
        seen |= set(zip(rows.tolist(), cols.tolist()))
    assert len(seen) == 5000  # every cell once, in exactly one split
    file_only = load("opencv-digits", root=tmp_path / "digits.png", subset=3, seed=0)
    assert file_only.train.class_counts().tolist() == [3] * 10


def test_opencv_digits_bad_files_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADSTART_OPENCV_DIGITS", raising=False)
    with pytest.raises(DataError, match="not found.*opencv-doc"):
        load("opencv-digits", root=tmp_path)
    Image.new("L", (200, 100)).save(tmp_path / "digits.png")
    with pytest.raises(DataError, match="200x100 px.*2000x1000"):
        load("opencv-digits", root=tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "digits.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="corrupt"):
        load("opencv-digits", root=tmp_path / "bad")


@pytest.mark.skipif(not any(Path(f).is_file() for f in OPENCV_DIGITS_FILES), reason="OpenCV's digits.png is absent")
def test_opencv_digits_real_sheet_labels_match_images():
    splits = load("opencv-digits")
    assert len(splits.train) == 3600 and len(splits.val) == 400 and splits.test.class_counts().tolist() == [100] * 10
    x, y = splits.train.images.float().flatten(1), splits.train.targets
    ink = torch.stack([x[y == c].mean() for c in range(10)])
    assert int(ink.argmin()) == 1 and int(ink.argmax()) == 0  # a "1" has the least ink, a "0" the most
    # nearest class mean on raw pixels: about 0.79; labels shifted by one grid row would score near chance
    centroids = torch.stack([x[y == c].mean(0) for c in range(10)])
    test = splits.test.images.float().flatten(1)
    assert (torch.cdist(test, centroids).argmin(1) == splits.test.targets).float().mean() > 0.7


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} is absent")
def test_fashion_mnist_loads():
    splits = load("fashion-mnist")
    assert len(splits.classes) == 10 and splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"
    assert splits.train.images.shape == (54000, 1, 28, 28)
    assert len(splits.val) == 6000 and splits.test.images.shape == (10000, 1, 28, 28)
    assert splits.train.class_counts().tolist() == [5400] * 10
    small = load("fashion-mnist", subset=20, test_subset="all")
    assert small.train.class_counts().tolist() == [20] * 10
    assert len(small.test) == 10000


def test_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load("fashion-mnist", root=str(tmp_path))
