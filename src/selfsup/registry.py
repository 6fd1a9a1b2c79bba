"""Name → factory registries for methods, backbones, datasets, evaluators and augmentation presets.

Every public part is reached by name through one of these registries, so the CLI, the config files and the
tests generated from the registry all see the same list. Unknown names are errors that list the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; its message lists the registered names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    help: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """A case-sensitive map from lower-case hyphenated names to objects (classes or factories)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, help: str = "", **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("simclr", help="...")``."""
        if name != name.lower() or "_" in name or " " in name:
            raise ValueError(f"{self.kind} name '{name}' must be lower-case with hyphens")

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            doc = help or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, doc, dict(meta))
            return obj

        return deco

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        _load_builtins()
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {str(name)!r}; known: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        _load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        _load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        _load_builtins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))


METHODS: Registry[Any] = Registry("method")
BACKBONES: Registry[Any] = Registry("backbone")
DATASETS: Registry[Any] = Registry("dataset")
EVALUATORS: Registry[Any] = Registry("evaluator")
AUGMENT_PRESETS: Registry[Any] = Registry("augmentation preset")

_loaded = False


def _load_builtins() -> None:
    """Import the built-in packages once so that their decorators run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    for pkg_name in ("backbones", "methods", "data", "evaluation", "augment"):
        pkg = importlib.import_module(f"selfsup.{pkg_name}")
        for mod in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            importlib.import_module(mod.name)
