"""The package's shape: imports point down the layers of docs/architecture.md, with no loops.

Every import counts, function-level ones included: a lazy import is still a dependency, and a loop hidden
inside a function is still a loop.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "headstart"

# Lowest first. A module may import from its own layer or any layer below, never from one above.
LAYERS = [
    ["errors"],
    ["registry", "options", "atomic", "runtime"],
    ["backbones", "fold", "heads", "metrics", "linear_fit"],
    ["data", "features", "adapters"],
    ["model"],
    ["objectives", "bundle"],
    ["strategies"],
    ["run", "inference", "export"],
    ["plan", "report"],
    ["config"],
    ["api", "catalog", "demo", "testing"],
    ["cli", "__main__", ""],  # "" is the package's own __init__
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}
NO_PYDANTIC = ("run", "strategies", "objectives", "backbones", "data", "plan")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(target: str) -> str:
    """The module an imported name lives in: `headstart.data.Batch` -> `headstart.data`."""
    while target.count(".") and not ((PACKAGE.parent / target.replace(".", "/")).with_suffix(".py").is_file()
                                     or (PACKAGE.parent / target.replace(".", "/")).is_dir()):
        target = target.rsplit(".", 1)[0]
    return target


def imports() -> dict[str, set[str]]:
    """{module: the headstart modules it imports}, from the source (function-level imports included)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            found |= {resolve(t) for t in targets if t.split(".")[0] == "headstart"} - {name}
    return graph


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    assert top in LAYER_OF, f"{module} is in no layer of tests/test_layers.py; place it in LAYERS"
    return LAYER_OF[top]


def test_no_import_points_up_a_layer():
    upward = [f"{a} -> {b}" for a, targets in imports().items() for b in targets if layer(b) > layer(a)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_no_import_loops():
    graph = imports()
    loops: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                loops.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not loops, "import loops:\n" + "\n".join(" -> ".join(loop) for loop in loops)


@pytest.mark.parametrize("package", NO_PYDANTIC)
def test_layers_below_config_take_plain_settings(package):
    users = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / package).rglob("*.py") if "pydantic" in p.read_text()]
    assert not users, f"{package}/ must not use pydantic (configs stop at config/): {users}"


def test_the_checker_sees_a_loop_and_an_upward_import(tmp_path, monkeypatch):
    """The walk above must be able to fail: a planted loop and an upward import are both found."""
    fake = tmp_path / "headstart"
    (fake / "run").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "errors.py").write_text("from .run import trainer\n")  # ground imports the loop driver: upward
    (fake / "run" / "__init__.py").write_text("")
    (fake / "run" / "trainer.py").write_text("def f():\n    from ..errors import E\n")  # closes a loop
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    graph = imports()
    assert "headstart.run.trainer" in graph["headstart.errors"]
    assert "headstart.errors" in graph["headstart.run.trainer"]
    with pytest.raises(AssertionError, match="errors -> headstart.run"):
        test_no_import_points_up_a_layer()
    with pytest.raises(AssertionError, match="import loops"):
        test_no_import_loops()
