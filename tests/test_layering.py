"""Data flows one way: data -> corrupt -> models -> train -> evaluate -> demo / cli. No module
imports a layer above its own or beside it (models never import the protocols: what a protocol
did reaches them in the batch's typed record). Read from the source, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "msakit"
# leaves anyone may use, then the layers in the direction data flows
RANK = {"errors": 0, "fileio": 0, "registry": 0, "metrics": 0, "display": 0, "features": 1,
        "data": 2, "corrupt": 3, "models": 3, "prompts": 3, "extract": 4, "train": 5,
        "evaluate": 6, "tune": 6, "demo": 7, "serve": 7, "cli": 8}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "msakit" and len(parts) > 1 else None


def test_no_module_imports_a_layer_above_its_own():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__":
            continue  # the package's lazy public names
        assert own in RANK, f"{rel}: new top-level module; give it a layer in RANK"
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "msakit":
                    names = [f"msakit.{a.name}" for a in node.names if a.name != "__version__"]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                other = layer(n)
                above = other in RANK and RANK[other] > RANK[own]
                beside = other in RANK and other != own and RANK[other] == RANK[own] > 0
                if above or beside:
                    bad.append(f"{rel}:{node.lineno} imports {n}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)
