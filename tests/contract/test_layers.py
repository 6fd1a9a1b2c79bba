"""The package's layers: a module imports only from its own layer or the ones below it (docs/architecture.md).

Walks every import statement of ``src/selfsup`` (function-level imports included: a lazy import is still a
dependency) and fails on an upward one, naming the file and the import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "src" / "selfsup"

# Lowest first. A package may import packages of its own rank or lower. The registry is rank 0 although it
# imports the built-in packages: it does so lazily, to run their decorators, and nothing in it depends on them.
RANK = {
    "errors": 0, "registry": 0, "progress": 0,
    "checkpoints": 1, "losses": 1, "backbones": 1, "data": 1,
    "augment": 2, "components": 2, "heads": 2,
    "config": 3, "config_checks": 3, "configs": 3,
    "methods": 4,
    "engine": 5,
    "evaluation": 6,
    "api": 7, "viz": 7, "use": 7,  # api: pretraining with the evaluation callbacks attached; use: embed, search, select, classify
    "studies": 8,
    "cli": 9, "__main__": 9, "__init__": 9,
}


def _package(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``selfsup`` import in ``path``."""
    rel = path.relative_to(ROOT)
    parts = ["selfsup", *rel.with_suffix("").parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
        package = parts
    else:
        package = parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:  # ``from . import x``: x may be a module
                    names = [f"{names[0]}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.startswith("selfsup.")]
    return found


FILES = sorted(ROOT.rglob("*.py"))


def test_every_package_has_a_rank():
    missing = sorted({_package(p.relative_to(ROOT)) for p in FILES} - set(RANK))
    assert not missing, f"give these packages a rank in tests/contract/test_layers.py: {missing}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_import(path):
    own = _package(path.relative_to(ROOT))
    if own == "registry":
        return
    bad = []
    for line, name in _imports(path):
        target = name.split(".")[1]
        if target in RANK and RANK[target] > RANK[own]:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({own} is below {target})")
    assert not bad, "\n".join(bad)


def test_the_walker_resolves_relative_imports(tmp_path, monkeypatch):
    """``from ..engine import x`` inside methods/ is seen as ``selfsup.engine`` and reported."""
    fake = tmp_path / "selfsup" / "methods" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from ..losses import contrastive\n\ndef f():\n    from ..engine.checkpoint import x\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path / "selfsup")
    assert [n for _, n in _imports(fake)] == ["selfsup.losses", "selfsup.engine.checkpoint"]
    with pytest.raises(AssertionError, match="methods/fake.py:4 imports selfsup.engine.checkpoint"):
        test_no_upward_import(fake)
