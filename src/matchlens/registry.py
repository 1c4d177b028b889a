"""Name → implementation registries, so configs and the CLI choose components by name.

A registry is the only list of its names: spec validation, error messages and CLI help read it.
Registering a class sets its ``name`` attribute, so a class never repeats its registry name.
This module imports nothing heavy (only :mod:`matchlens.errors`).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType
from typing import Callable, Generic, Iterator, TypeVar

from matchlens.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from config names to implementations with a clear error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (names are case-insensitive).

        A class gets ``obj.name = name``: the registration is the one place its name is written.
        """

        def decorator(obj: T) -> T:
            key = name.lower()
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            if inspect.isclass(obj):
                obj.name = name  # type: ignore[attr-defined]
            self._items[key] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> T:
        """Remove and return the entry ``name`` (plugins and tests that register temporarily)."""
        obj = self.get(name)
        del self._items[name.lower()]
        return obj

    def get(self, name: str) -> T:
        """Return the implementation registered as ``name`` or raise a one-line ConfigError."""
        if not isinstance(name, str):
            raise ConfigError(f"{self.kind} name must be a string, got {name!r}; choose one of: {self.choices()}")
        try:
            return self._items[name.lower()]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {self.choices()}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def ordered(self) -> tuple[str, ...]:
        """All registered names in registration order (a family's default order, e.g. the
        verifier's metric channels)."""
        return tuple(self._items)

    def choices(self) -> str:
        """The sorted names as ``"a, b, c"`` (error messages)."""
        return ", ".join(self.names())

    def help_text(self, sep: str = " | ") -> str:
        """The names in registration order, e.g. ``"aqe | alpha_qe | kr | diffusion"`` (CLI help)."""
        return sep.join(self._items)

    def describe(self) -> str:
        """One line per entry, in registration order: ``name(param=default, ...)  first doc line``."""
        lines = []
        for key, obj in self._items.items():
            summary = getattr(obj, "summary", None)
            head = summary() if inspect.isclass(obj) and callable(summary) else key
            doc = (inspect.getdoc(obj) or "").strip().splitlines()
            lines.append(f"{head}  {doc[0]}" if doc else head)
        return "\n".join(lines)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def import_submodules(package: ModuleType) -> list[str]:
    """Import every module of ``package`` (sorted; names starting with ``_`` skipped) so that the
    registrations in them run: a new component is a new module, with no list to edit."""
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package.__name__}.{name}")
    return names
