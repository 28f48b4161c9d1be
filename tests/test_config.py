"""Tests for headstart.config: defaults, YAML round trip, --set overrides and error messages."""
from __future__ import annotations

import os

import pytest

from headstart.config import (
    DataConfig,
    RunConfig,
    apply_overrides,
    config_to_yaml,
    load_config,
    save_config,
    valid_keys,
)
from headstart.errors import ConfigError


def write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- defaults


def test_defaults_validate():
    cfg = load_config()
    assert cfg == RunConfig()
    assert (cfg.model.backbone, cfg.model.weights) == ("auto", "auto")  # pretrained, chosen by the data
    assert cfg.model.head == "linear"
    assert cfg.train.epochs is None and cfg.train.batch_size is None  # by modality and data size
    assert cfg.train.lr is None  # the strategy's default for the backbone's modality
    assert cfg.train.early_stopping.patience is None
    assert cfg.strategy.name == "full"
    assert cfg.out == "runs/run"
    # Re-validating the dumped defaults is a no-op.
    assert RunConfig.model_validate(cfg.model_dump()) == cfg


def test_valid_keys_lists_dotted_leaves():
    keys = valid_keys()
    assert "train.epochs" in keys
    assert "train.early_stopping.patience" in keys
    assert "out" in keys
    assert "train" not in keys and "train.early_stopping" not in keys
    assert keys == sorted(keys)
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------- YAML


def test_yaml_round_trip(tmp_path):
    cfg = load_config(
        overrides=[
            "data.dataset=fashion-mnist",
            "strategy.name=lp-ft",
            "train.lr=1e-4",
            "train.head_lr=0.01",
            "train.channels_last=off",
            "train.early_stopping.patience=3",
            "model.image_size=224",
            "out=runs/x",
        ]
    )
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert path.exists()
    assert load_config(path) == cfg
    # config_to_yaml gives the same text that was saved.
    assert path.read_text(encoding="utf-8") == config_to_yaml(cfg)
    # And the defaults round-trip too.
    save_config(RunConfig(), tmp_path / "d.yaml")
    assert load_config(tmp_path / "d.yaml") == RunConfig()


def test_load_yaml_values_and_empty_sections(tmp_path):
    path = write(
        tmp_path,
        "model:\n  head: mlp\n  dropout: 0.2\n"
        "data:\n  path: images/train\n"
        "strategy:\n"  # empty section -> defaults
        "train:\n  epochs: 2\n  lr: 1e-4\n  channels_last: on\n  early_stopping:\n    patience: 4\n",
    )
    cfg = load_config(path)
    assert cfg.model.head == "mlp"
    assert cfg.model.dropout == pytest.approx(0.2)
    assert cfg.data.path == "images/train"
    assert cfg.strategy.name == "full"
    assert cfg.train.epochs == 2
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.channels_last == "on"  # YAML 1.1 reads `on` as True
    assert cfg.train.early_stopping.patience == 4


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == RunConfig()


# --------------------------------------------------------------------------- overrides


def test_overrides_cast_to_field_types(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 2\n")
    cfg = load_config(
        path,
        [
            "train.epochs=7",
            "train.lr=1e-4",
            "train.progress=false",
            "data.augment=False",
            "model.weights=null",
            "train.clip_grad_norm=1",
            "train.early_stopping.patience=2",
            "strategy.name=lp-ft",
            "data.dataset=123",
        ],
    )
    assert cfg.train.epochs == 7 and type(cfg.train.epochs) is int
    assert cfg.train.lr == pytest.approx(1e-4) and type(cfg.train.lr) is float
    assert cfg.train.progress is False
    assert cfg.data.augment is False
    assert cfg.model.weights is None
    assert cfg.train.clip_grad_norm == 1.0 and type(cfg.train.clip_grad_norm) is float
    assert cfg.train.early_stopping.patience == 2
    assert cfg.strategy.name == "lp-ft"
    assert cfg.data.dataset == "123"  # a string field keeps the text as typed


def test_override_null_resets_optional_field():
    cfg = load_config(overrides=["train.early_stopping.patience=5"])
    assert cfg.train.early_stopping.patience == 5
    cfg2 = apply_overrides(cfg, ["train.early_stopping.patience=null"])
    assert cfg2.train.early_stopping.patience is None


def test_apply_overrides_returns_new_validated_config():
    base = RunConfig()
    cfg = apply_overrides(base, ["train.batch_size=64", "train.optimizer=sgd", "train.channels_last=on"])
    assert cfg.train.batch_size == 64
    assert cfg.train.optimizer == "sgd"
    assert cfg.train.channels_last == "on"
    assert base.train.batch_size is None  # the original is untouched
    assert cfg.model == base.model
    with pytest.raises(ConfigError, match="train.batch_size: received 0"):
        apply_overrides(base, ["train.batch_size=0"])


def test_later_override_wins_and_section_mapping_merges():
    cfg = load_config(overrides=["train.epochs=3", "train.epochs=4", "train={lr: 0.5}"])
    assert cfg.train.epochs == 4
    assert cfg.train.lr == pytest.approx(0.5)


def test_override_without_equals_shows_expected_form():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["train.epochs"])
    msg = str(exc.value)
    assert "'train.epochs'" in msg and "key=value" in msg


def test_override_into_a_value_or_onto_a_section_is_rejected():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(overrides=["train.lr.x=1"])
    with pytest.raises(ConfigError, match="is a section, not a value"):
        load_config(overrides=["train=5"])


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_in_override_names_close_match_and_valid_keys():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["train.epoch=3"])
    msg = str(exc.value)
    assert "unknown config key 'train.epoch'" in msg
    assert "Did you mean 'train.epochs'?" in msg
    assert "Valid keys under 'train':" in msg
    assert "batch_size" in msg and "clip_grad_norm" in msg


def test_unknown_nested_key_in_override():
    with pytest.raises(ConfigError) as exc:
        apply_overrides(RunConfig(), ["train.early_stopping.patiense=2"])
    msg = str(exc.value)
    assert "Did you mean 'train.early_stopping.patience'?" in msg
    assert "metric, mode, patience" in msg


def test_unknown_top_level_key_suggests_section():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["lr=0.1"])
    msg = str(exc.value)
    assert "Did you mean 'train.lr'?" in msg
    assert "data, domain, model, multitask, out, strategy, tasks, train" in msg


def test_unknown_key_in_yaml_names_close_match_and_valid_keys(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\nmodel:\n  head: mlp\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "unknown config key 'train.epoch'" in msg
    assert "Did you mean 'train.epochs'?" in msg
    assert "Valid keys under 'train':" in msg and "batch_size" in msg
    assert str(path) in msg


def test_unknown_keys_in_yaml_are_all_reported(tmp_path):
    path = write(tmp_path, "modle:\n  head: mlp\ndata:\n  datset: x\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "'modle'" in msg and "Did you mean 'model'?" in msg
    assert "'data.datset'" in msg and "Did you mean 'data.dataset'?" in msg


# --------------------------------------------------------------------------- bad values


def test_bad_value_names_field_and_received_value():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["train.lr=-1"])
    msg = str(exc.value)
    assert "train.lr: received -1" in msg
    assert "greater than 0" in msg


def test_bad_values_in_yaml_are_all_reported(tmp_path):
    path = write(tmp_path, "model:\n  head: conv\n  dropout: 1.5\ntrain:\n  epochs: zero\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "model.head: received 'conv'" in msg and "'linear' or 'mlp'" in msg
    assert "model.dropout: received 1.5" in msg
    assert "train.epochs: received 'zero'" in msg
    assert "3 problems" in msg


def test_bad_optional_value_path_has_no_type_tags():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["train.head_lr=abc"])
    msg = str(exc.value)
    assert "train.head_lr: received 'abc'" in msg


def test_section_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="train: received 5"):
        load_config(write(tmp_path, "train: 5\n"))


# --------------------------------------------------------------------------- files


def test_missing_file_raises_config_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(missing)
    assert "not found" in str(exc.value)
    assert str(missing) in str(exc.value)


def test_malformed_yaml_raises_config_error_with_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  lr: [1, 2\nmodel:\n  head: mlp\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "cannot parse YAML" in msg
    assert "line " in msg
    assert str(path) in msg


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    save_config(RunConfig(), target)
    save_config(load_config(overrides=["train.epochs=9"]), target)  # overwrite
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]
    assert load_config(target).train.epochs == 9

    # A failure during the write leaves the old file intact and no temp file behind.
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_config(RunConfig(), target)
    assert sorted(os.listdir(tmp_path)) == ["config.yaml"]
    assert load_config(target).train.epochs == 9


# --------------------------------------------------------------------------- data source


def test_require_source():
    with pytest.raises(ConfigError, match="data.dataset"):
        DataConfig().require_source()
    with pytest.raises(ConfigError, match="both"):
        DataConfig(dataset="fashion-mnist", path="imgs").require_source()
    cfg = DataConfig(dataset="fashion-mnist")
    assert cfg.require_source() is cfg
    assert DataConfig(path="imgs").require_source().path == "imgs"


def test_models_forbid_extra_fields():
    with pytest.raises(Exception):
        DataConfig(datasett="x")
