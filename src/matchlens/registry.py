"""Name → implementation registries, so configs and the CLI choose components by name."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from matchlens.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from config names to implementations with a clear error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` (names are case-insensitive)."""

        def decorator(obj: T) -> T:
            key = name.lower()
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the implementation registered as ``name`` or raise a one-line ConfigError."""
        try:
            return self._items[name.lower()]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
