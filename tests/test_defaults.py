"""Pretrained by default (issue 15): `headstart fit --data X` with no backbone or weights named trains from
the default backbone's pretrained weights, says so in the run header and records them in config.yaml."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from headstart.cli import app
from test_bundle_cli import write_folder
from test_text import sentiment_rows, write_csv

pytestmark = pytest.mark.real  # the installed EfficientNet-Lite0 and MiniLM packages


def fit(*args: str):
    return CliRunner().invoke(app, ["fit", "--epochs", "1", "--set", "train.batch_size=8", *args])


def saved_model(run) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())["model"]


def test_an_image_folder_alone_trains_from_pretrained_weights(tmp_path):
    write_folder(tmp_path / "imgs")
    res = fit("--data", str(tmp_path / "imgs"), "--set", "model.image_size=32", "--set", "data.val_fraction=0.34",
              "--out", str(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    assert "weights: package:efficientnet-lite0 (sha256:" in res.output
    assert saved_model(tmp_path / "run")["backbone"] == "timm:tf_efficientnet_lite0"
    assert saved_model(tmp_path / "run")["weights"] == "package:efficientnet-lite0"


def test_random_weights_only_when_asked_and_said_in_the_header(tmp_path):
    write_folder(tmp_path / "imgs")
    res = fit("--data", str(tmp_path / "imgs"), "--weights", "random", "--set", "model.image_size=32",
              "--set", "data.val_fraction=0.34", "--out", str(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    assert "weights: RANDOM" in res.output
    assert saved_model(tmp_path / "run")["weights"] == "random"


def test_a_text_file_alone_gets_the_packaged_text_encoder(tmp_path):
    data = write_csv(tmp_path / "reviews.csv", sentiment_rows(40))
    res = fit("--data", str(data), "--text-column", "body", "--label-column", "topic", "--set", "model.max_length=16",
              "--set", "data.val_fraction=0.25", "--out", str(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    model = saved_model(tmp_path / "run")
    assert (model["backbone"], model["weights"]) == ("hf:sentence-transformers/all-MiniLM-L6-v2",
                                                     "package:all-minilm-l6-v2")
    assert "weights: package:all-minilm-l6-v2" in res.output
