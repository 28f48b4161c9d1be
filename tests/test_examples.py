"""The scripts in examples/ run at their small size (--small) and leave what they promise."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def bundle(run: Path) -> Path:
    return run / "best" / "model.safetensors"


def test_every_example_is_tested_and_documents_small():
    tested = {"image_folder.py", "predict_evaluate.py", "text_csv.py", "auto_budget.py", "multitask.py"}
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == tested, f"untested or missing examples: {scripts ^ tested}"
    for name in scripts:
        assert "--small" in (EXAMPLES / name).read_text().split('"""')[1], f"{name}: its docstring shows --small"


def test_examples_refuse_to_run_without_data(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "image_folder.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--data FOLDER" in proc.stderr


@pytest.mark.real
def test_image_folder_then_predict_evaluate(tmp_path):
    out = run_example("image_folder.py", "--small", "--out", "runs/images", cwd=tmp_path)
    assert "best epoch" in out and bundle(tmp_path / "runs" / "images").is_file()
    assert len(list((tmp_path / "runs" / "images-data").iterdir())) == 10  # one folder per class
    out = run_example("predict_evaluate.py", "runs/images", "--small", "--out", "preds/preds.csv", cwd=tmp_path)
    rows = (tmp_path / "preds" / "preds.csv").read_text().splitlines()
    assert rows[0] == "path,label,probability" and len(rows) == 1 + 50
    assert "train/accuracy" in out


@pytest.mark.real
def test_text_csv(tmp_path):
    out = run_example("text_csv.py", "--small", "--out", "runs/text", cwd=tmp_path)
    assert bundle(tmp_path / "runs" / "text").is_file()
    assert (tmp_path / "runs" / "text-data" / "news.csv").read_text().startswith("text,topic")
    assert "('sport" in out or "('business" in out  # predictions are (label, probability) pairs


@pytest.mark.real
def test_auto_budget(tmp_path):
    out = run_example("auto_budget.py", "--small", "--out", "runs/auto", cwd=tmp_path)
    decision = json.loads((tmp_path / "runs" / "auto" / "auto.json").read_text())
    assert decision["strategy"] in out and "test/accuracy" in out


@pytest.mark.real
def test_multitask(tmp_path):
    out = run_example("multitask.py", "--small", "--out", "runs/mt", cwd=tmp_path)
    assert bundle(tmp_path / "runs" / "mt").is_file()
    assert "test/item/accuracy" in out and "test/kind/accuracy" in out and "'kind': [(" in out
