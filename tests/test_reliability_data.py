"""Reliability review (issue 19): data and config inputs that used to be accepted silently and wrongly.

16-bit images decoded almost all white, NaN labels turned into a class named "nan", one-class training sets
that "trained perfectly", and config values (booleans for numbers, duplicate YAML keys, huge image sizes)
that were read as something else or ran out of memory.
"""
from __future__ import annotations

import json
import typing

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.config import RunConfig, apply_overrides, load_config, run_config
from headstart.data import from_arrays, from_texts, image_folder, load_image_files, text_file
from headstart.errors import ConfigError, DataError


# ---------------------------------------------------------------------------------------------------------
# 16- and 32-bit grey images are scaled, not clipped


def _gradient(width: int = 256, height: int = 4, top: int = 65535) -> np.ndarray:
    """A left-to-right gradient from 0 to `top` (each column one step)."""
    return np.tile(np.linspace(0, top, width).round(), (height, 1))


def test_16_bit_grey_png_is_scaled_to_the_full_8_bit_range(tmp_path):
    path = tmp_path / "gradient16.png"
    Image.fromarray(_gradient().astype(np.uint16)).save(path)
    with Image.open(path) as written:
        assert written.mode == "I;16"  # what PIL reads back: the case under test
    images, kept = load_image_files([str(path)], None)
    row = images[0, 0, 0].long()
    assert images.shape == (1, 1, 4, 256) and kept == [0]
    # 0..65535 in 256 equal steps is k * 257, which must come back as k: 0..255, one level per column.
    assert torch.equal(row, torch.arange(256))
    assert (images == 255).float().mean().item() < 0.01  # it used to be ~99% white


def test_32_bit_integer_image_holding_16_bit_values_is_scaled_like_16_bit(tmp_path):
    path = tmp_path / "gradient32.tif"  # PIL cannot write mode "I" as PNG; TIFF keeps it
    Image.fromarray(_gradient().astype(np.int32)).save(path)
    with Image.open(path) as written:
        assert written.mode == "I"
    images, _ = load_image_files([str(path)], None)
    assert torch.equal(images[0, 0, 0].long(), torch.arange(256))


def test_32_bit_integer_image_beyond_16_bits_spans_0_to_255(tmp_path):
    path = tmp_path / "gradient31.tif"
    Image.fromarray(_gradient(top=2**31 - 1).astype(np.int32)).save(path)
    images, _ = load_image_files([str(path)], None)
    row = images[0, 0, 0].long()
    assert int(row[0]) == 0 and int(row[-1]) == 255
    assert bool((row[1:] >= row[:-1]).all())  # still a gradient
    assert len(row.unique()) > 200  # not collapsed to a few levels


def test_32_bit_integer_image_with_negative_values_is_refused_not_clipped(tmp_path):
    path = tmp_path / "signed.tif"
    Image.fromarray(np.array([[-5, 0], [100, 70000]], np.int32)).save(path)
    with pytest.raises(DataError, match=r"signed.tif.*negative pixel values"):
        load_image_files([str(path)], None)


def test_16_bit_folder_images_keep_their_contrast(tmp_path):
    # Dark and bright 16-bit images in two classes: they used to both decode as pure white.
    for cls, value in (("dark", 10_000), ("bright", 60_000)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), value + i, np.uint16)).save(tmp_path / cls / f"{i}.png")
    splits = image_folder(tmp_path, val_fraction=0, stored_size=8)
    means = {splits.classes[int(t)]: float(img.float().mean()) for img, t in
             zip(splits.train.images, splits.train.targets)}
    assert means["dark"] == pytest.approx(10_000 / 257, abs=1)
    assert means["bright"] == pytest.approx(60_000 / 257, abs=1)


# ---------------------------------------------------------------------------------------------------------
# Missing and NaN labels are refused, never turned into a class "nan"


def _write_jsonl(path, labels) -> None:
    # json.dumps writes float("nan") as the bare token NaN, as pandas' to_json and many exporters do.
    path.write_text("".join(json.dumps({"text": f"text number {i}", "label": lab}) + "\n"
                            for i, lab in enumerate(labels)))


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv"])
def test_nan_labels_in_text_files_are_refused_with_file_rows_and_fix(tmp_path, suffix):
    labels = ["a", float("nan"), "b", float("nan"), "a", "b"]
    path = tmp_path / f"reviews.{suffix}"
    if suffix == "jsonl":
        _write_jsonl(path, labels)
    elif suffix == "json":
        path.write_text(json.dumps([{"text": f"text {i}", "label": lab} for i, lab in enumerate(labels)]))
        assert "NaN" in path.read_text()
    else:  # a pandas column of strings with gaps, written with astype(str), has the text "nan"
        path.write_text("text,label\n" + "".join(f"text {i},{lab}\n" for i, lab in enumerate(labels)))
    with pytest.raises(DataError) as exc:
        text_file(path, val_fraction=0)
    msg = str(exc.value)
    assert str(path) in msg
    assert "rows 2, 4 " in msg
    assert "NaN" in msg and "Fill in" in msg and "drop" in msg


def test_nan_and_none_labels_in_memory_are_refused():
    with pytest.raises(DataError, match=r"missing label in rows 2 "):
        from_texts(["one", "two", "three"], ["a", float("nan"), "b"], val_fraction=0)
    with pytest.raises(DataError, match=r"missing label in rows 3 "):
        from_texts(["one", "two", "three"], ["a", "b", np.nan], val_fraction=0)
    # Only the spellings a gap takes are refused: "Nan" is a name.
    assert from_texts(["one", "two"], ["Nan", "Bob"], val_fraction=0).classes == ["Bob", "Nan"]


def test_nan_inside_multi_label_lists_is_refused(tmp_path):
    path = tmp_path / "tags.jsonl"
    _write_jsonl(path, [["a"], ["a", float("nan")], ["b"], []])
    with pytest.raises(DataError, match=r"tags.jsonl.*NaN.* in rows 2 .*\[\]"):
        text_file(path, multi_label=True, val_fraction=0)


def test_missing_labels_in_image_arrays_are_refused():
    x = np.zeros((4, 5, 5), np.uint8)
    for labels in (np.array(["cat", "dog", None, "dog"], dtype=object),
                   np.array(["cat", "dog", np.nan, "dog"], dtype=object),
                   np.array(["cat", "dog", "nan", "dog"])):
        with pytest.raises(DataError, match=r"y has missing labels .* at positions 2\b.*drop"):
            from_arrays(x, labels, val_fraction=0)
    # Float regression targets with NaN would make every loss NaN.
    with pytest.raises(DataError, match=r"y has NaN or infinite regression targets at positions 1\b"):
        from_arrays(x, np.array([0.5, np.nan, 1.5, 2.0]), val_fraction=0)
    with pytest.raises(DataError, match=r"NaN"):
        from_arrays(x, np.array([0.0, np.nan, 1.0, 1.0]), classes=["a", "b"], val_fraction=0)


# ---------------------------------------------------------------------------------------------------------
# One class is not something to train on


def test_image_folder_with_one_class_is_refused(tmp_path):
    for i in range(4):
        (tmp_path / "cats").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(tmp_path / "cats" / f"{i}.png")
    with pytest.raises(DataError) as exc:
        image_folder(tmp_path, val_fraction=0.25, stored_size=8)
    msg = str(exc.value)
    assert "1 class" in msg and "'cats'" in msg and "second class folder" in msg


def test_text_file_with_one_label_is_refused(tmp_path):
    path = tmp_path / "one.jsonl"
    _write_jsonl(path, ["spam"] * 6)
    with pytest.raises(DataError) as exc:
        text_file(path)
    msg = str(exc.value)
    assert str(path) in msg and "1 class" in msg and "'spam'" in msg and "second label" in msg


def test_arrays_and_texts_with_one_class_are_refused_but_regression_is_not():
    x = np.zeros((6, 5, 5), np.uint8)
    with pytest.raises(DataError, match=r"1 class \('0'\).*second class"):
        from_arrays(x, np.zeros(6, int))
    # Naming more classes does not help if the training labels use only one of them.
    with pytest.raises(DataError, match=r"1 class \('b'\) out of the 3 in the class list"):
        from_arrays(x, np.ones(6, int), classes=["a", "b", "c"])
    with pytest.raises(DataError, match=r"1 class \('pos'\)"):
        from_texts(["good", "great", "fine"], ["pos"] * 3)
    # Float targets are regression: one value range, no classes, nothing to refuse.
    reg = from_arrays(x, np.linspace(0, 1, 6), val_fraction=0)
    assert reg.train.is_regression and reg.classes == []
    # Two classes are enough.
    assert from_arrays(x, np.arange(6) % 2, val_fraction=0).classes == ["0", "1"]


def test_multi_label_data_where_every_row_has_the_same_labels_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"every training row has the same labels \['a', 'b'\]"):
        from_texts(["one", "two", "three"], [["a", "b"]] * 3, multi_label=True, val_fraction=0)
    # One tag present in some rows and absent in others is a real (binary) problem.
    ok = from_texts(["one", "two", "three"], [["a"], [], ["a"]], multi_label=True, val_fraction=0)
    assert ok.classes == ["a"]


# ---------------------------------------------------------------------------------------------------------
# Config: booleans are not numbers, duplicate YAML keys, image size bound


def _numeric_keys() -> list[tuple[str, bool]]:
    """(dotted key, is a list) of every config leaf that takes int or float numbers, derived sections included."""
    def numeric(annotation) -> tuple[bool, bool]:
        args = typing.get_args(annotation) or (annotation,)
        # Annotated[float, Field(gt=0)] inside a union (train.lr, which also takes "auto") is a number too.
        args = tuple(typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a for a in args)
        lists = [a for a in args if typing.get_origin(a) is list]
        plain = {a for a in args if typing.get_origin(a) is None}
        if lists:
            return numeric(typing.get_args(lists[0])[0])[0], True
        return bool(plain & {int, float}) and bool not in plain, False

    out = []

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                walk(sub, f"{prefix}{name}.")
                continue
            is_number, is_list = numeric(sub)
            if is_number:
                out.append((f"{prefix}{name}", is_list))

    walk(run_config(), "")
    return out


def test_numeric_keys_cover_every_section():
    keys = [k for k, _ in _numeric_keys()]
    for expected in ("train.batch_size", "train.lr", "train.early_stopping.patience", "strategy.lora_r",
                     "strategy.group_lrs", "model.image_size", "data.subset", "data.val_fraction"):
        assert expected in keys


@pytest.mark.parametrize("key, is_list", _numeric_keys())
def test_a_boolean_for_a_number_is_refused_by_every_numeric_key(key, is_list):
    with pytest.raises(ConfigError) as exc:
        apply_overrides(RunConfig(), [f"{key}={'[true]' if is_list else 'true'}"])
    msg = str(exc.value)
    assert key in msg and ("received True" in msg or "received [True]" in msg)
    assert "a number" in msg


def test_a_boolean_for_a_number_in_yaml_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  batch_size: true\n  lr: false\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "train.batch_size: received True" in msg and "train.lr: received False" in msg
    assert "a number" in msg and str(path) in msg
    # Booleans stay fine where a boolean is expected, and numbers where a number is.
    path.write_text("train:\n  batch_size: 16\n  lr: 1\n  progress: false\ndata:\n  augment: true\n")
    cfg = load_config(path, ["train.epochs=3"])
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.progress, cfg.train.epochs) == (16, 1.0, False, 3)


def test_duplicate_yaml_keys_are_refused_with_their_lines(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 2\n  lr: 0.01\n  epochs: 9\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "'epochs'" in msg and "lines 2 and 4" in msg and str(path) in msg
    path.write_text("train:\n  epochs: 2\nmodel:\n  head: mlp\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'train'.*lines 1 and 5"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'lr'"):
        load_config(overrides=["train={lr: 0.1, lr: 0.2}"])


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  <<: {epochs: 2, lr: 0.01}\n  epochs: 4\n")
    cfg = load_config(path)
    assert cfg.train.epochs == 4 and cfg.train.lr == pytest.approx(0.01)  # the explicit key overrides the merge


def test_image_size_has_an_upper_bound():
    with pytest.raises(ConfigError, match=r"model.image_size: received 100000; .*2048"):
        load_config(overrides=["model.image_size=100000"])
    assert load_config(overrides=["model.image_size=2048"]).model.image_size == 2048


def test_predict_on_in_memory_16_bit_images_scales_like_files(tmp_path):
    """A 16-bit PIL image handed to predict() is scaled as a 16-bit file is, not clipped to white."""
    import headstart as hs
    from PIL import Image

    x, y = __import__("conftest").separable_images(6, classes=2)
    data = hs.data.from_arrays(x, y, classes=["a", "b"], val_fraction=0.34, seed=0)
    run = hs.fit(hs.create_model("toy:cnn", 2), data, "linear-probe", epochs=1, out=tmp_path / "r", progress=False)
    clf = hs.load(run.run_dir)
    gradient = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    img16 = Image.fromarray(gradient)  # uint16: mode I;16
    img8 = Image.fromarray(np.rint(gradient / 257).astype(np.uint8))
    np.testing.assert_allclose(clf.predict_proba([img16]), clf.predict_proba([img8]), rtol=1e-5, atol=1e-6)
