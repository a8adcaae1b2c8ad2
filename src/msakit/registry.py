"""Name -> object registries shared by the CLI and the Python API."""

from __future__ import annotations

import contextlib
from typing import Any, Generic, TypeVar

from msakit.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to entries, with errors that list what exists."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None) -> Any:
        """``reg.register("x", obj)`` or as a decorator ``@reg.register("x")``."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add(item) if item is not None else add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}"
            ) from None

    @contextlib.contextmanager
    def temporarily(self, name: str, item: T):
        """Register ``item`` for the duration of a ``with`` block (tests, experiments)."""
        self.register(name, item)
        try:
            yield item
        finally:
            self._items.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())



def scan_models() -> list[tuple[str, str]]:
    """(name, first docstring line) of every built-in model, read from the source files
    without importing them (so ``msakit models`` does not load torch). A test checks that
    this equals the live registry."""
    import ast
    from pathlib import Path

    out = []
    for path in sorted((Path(__file__).parent / "models").glob("*.py")):
        if path.name.startswith("_") or path.name == "base.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.ClassDef):
                continue
            for dec in node.decorator_list:
                if (
                    isinstance(dec, ast.Call)
                    and getattr(dec.func, "id", "") == "register_model"
                    and dec.args
                    and isinstance(dec.args[0], ast.Constant)
                ):
                    doc = (ast.get_docstring(node) or "").strip().splitlines()
                    out.append((dec.args[0].value, doc[0] if doc else ""))
    return sorted(out)
