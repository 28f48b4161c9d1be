"""mkdocs hook: the benchmark pages, copied at build time from `bench/README.md` and `bench/results/*.md`.

Those files stay the one source of the figures; the site shows them under `benchmarks/`, where the README's
relative links (`results/<name>.md`) still resolve. Quick-mode tables (`*_quick.md`, smoke tests, ignored by
git) are left out.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

BENCH = Path(__file__).resolve().parents[2] / "bench"
NOTE = ("!!! note\n    This page is `bench/README.md`, copied into the site at build time; the tables come from "
        "`bench/results/`.\n\n")


def _sources() -> dict[str, Path]:
    pages = {"benchmarks/index.md": BENCH / "README.md"}
    for table in sorted((BENCH / "results").glob("*.md")):
        if not table.stem.endswith("_quick"):
            pages[f"benchmarks/results/{table.name}"] = table
    return pages


def on_files(files, config):
    for uri, path in _sources().items():
        text = path.read_text(encoding="utf-8")
        if uri == "benchmarks/index.md":
            title, _, rest = text.partition("\n")
            text = f"{title}\n\n{NOTE}{rest}"
        files.append(File.generated(config, uri, content=text))
    return files


def on_serve(server, config, builder):
    server.watch(str(BENCH / "README.md"))
    server.watch(str(BENCH / "results"))
    return server
