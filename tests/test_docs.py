"""The extension recipes of docs/architecture.md run as written."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def test_architecture_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5, "the recipes (backbone source, strategy, objective term, data set, a run) are gone"
    for block in blocks[:4]:
        assert len(block.strip().splitlines()) <= 20, f"a recipe should stay short:\n{block}"
    script = tmp_path / "doc.py"
    script.write_text("\n".join(blocks))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/accuracy" in proc.stdout
    assert (tmp_path / "runs" / "doc" / "best" / "model.safetensors").is_file()


def test_multitask_page_examples_run(tmp_path):
    page = DOC.with_name("multitask.md")
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 2
    script = tmp_path / "doc.py"
    script.write_text("\n".join(blocks))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'item': [(" in proc.stdout and "'kind': [(" in proc.stdout
