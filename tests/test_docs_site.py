"""The documentation site: `mkdocs build --strict` passes (and fails on a broken link), and the quickstart
runs as written."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = [sys.executable, "-m", "mkdocs"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MKDOCS, "build", "--strict", "-f", str(config), "-d", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_site_builds_strict_with_generated_references(tmp_path):
    start = time.perf_counter()
    proc = build(ROOT / "mkdocs.yml", tmp_path / "site")
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < 60, f"the docs build took {seconds:.0f} s; keep it fast enough to run on every change"
    site = tmp_path / "site"
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("fit", "evaluate", "predict", "rank", "list"):  # one section per command of the typer app
        assert f'id="{command}"' in cli, f"the CLI reference lacks `headstart {command}`"
    assert "--max-bad-fraction" in cli and "--resume" in cli
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in ("model.create_model", "api.fit", "api.rank", "inference.load", "inference.evaluate",
                 "data.image_folder", "data.text_file", "inference.Predictor.predict", "data.datasets.load"):
        assert f'id="headstart.{name}"' in api, f"the API reference lacks headstart.{name}"
    assert "Train <code>model</code> on <code>data</code>" in api  # docstrings rendered, not just signatures
    bench = (site / "benchmarks" / "index.html").read_text()
    assert "strategy_grid.py" in bench and (site / "benchmarks" / "results" / "strategy_grid" / "index.html").is_file()


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """The same config over a copy of docs/ with one link to a missing page: the build must fail and say so."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("__pycache__"))
    with open(docs / "faq.md", "a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(ROOT / h) for h in config["hooks"]]
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    copy = tmp_path / "mkdocs.yml"
    copy.write_text(yaml.safe_dump(config))
    proc = build(copy, tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-page.md" in proc.stderr


def quickstart_blocks() -> list[tuple[str, str]]:
    return FENCE.findall((ROOT / "docs" / "quickstart.md").read_text())


def test_quickstart_blocks_are_all_runnable_kinds():
    """Every block is python or bash (both executed below), python first: an output or install block would
    escape the test."""
    blocks = quickstart_blocks()
    kinds = [kind for kind, _ in blocks]
    assert kinds and set(kinds) <= {"python", "bash"}, kinds
    assert kinds == sorted(kinds, key=lambda k: k != "python"), "bash blocks come after the python ones"


def test_python_blocks_of_every_page_parse():
    """Pages whose blocks are not executed still show valid Python."""
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for kind, code in FENCE.findall(page.read_text()):
            if kind == "python":
                try:
                    ast.parse(code)
                except SyntaxError as e:
                    pytest.fail(f"{page.relative_to(ROOT)}: {e}\n{code}")


@pytest.mark.real
def test_quickstart_runs_as_written(tmp_path):
    blocks = quickstart_blocks()
    python = "\n".join(code for kind, code in blocks if kind == "python")
    bash = "\n".join(code for kind, code in blocks if kind == "bash")
    (tmp_path / "quickstart.py").write_text(python)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "quickstart.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/accuracy" in proc.stdout
    assert (tmp_path / "runs" / "quickstart" / "best" / "model.safetensors").is_file()
    assert len(list((tmp_path / "photos").glob("*.png"))) == 5
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", bash], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (tmp_path / "preds.csv").read_text().splitlines()
    assert rows[0] == "path,label,probability" and len(rows) == 6
    assert (tmp_path / "runs" / "quickstart-cli" / "best" / "model.safetensors").is_file()
    assert "linear-probe" in proc.stdout
