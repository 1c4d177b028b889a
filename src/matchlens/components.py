"""The one base of configurable components: named, with validated parameters over defaults.

Every family chosen by name in a config or on the command line (rerankers, fusion operators,
classic encodings, vector backends, poolings) subclasses :class:`Component`:

* ``name`` is set by the family's :class:`~matchlens.registry.Registry` when the class is
  registered (``@RERANKERS.register("aqe")``); a class never writes its own name;
* ``defaults`` lists every parameter the component accepts, with its default value;
* ``Component(**params)`` rejects unknown parameters with a one-line :class:`ConfigError` that
  names the valid ones, merges ``defaults`` into :attr:`config` and calls :meth:`validate`;
* :meth:`validate` checks :attr:`config` with the shared validators below (``positive_int``,
  ``positive_float``, ``in_range``, ``one_of``, ...), each raising a one-line ConfigError;
* ``params()`` returns the JSON-serialisable configuration and ``repr()`` writes it back in the
  ``name:k=v,k=v`` syntax of the CLI.

This module only imports the standard library and :mod:`matchlens.errors`: it is cheap to import.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Callable, ClassVar, Iterable, Mapping, TypeVar

from matchlens.errors import ConfigError

__all__ = ["Component", "Params", "flag", "in_range", "integer", "non_negative_float", "non_negative_int", "number",
           "one_of", "optional", "positive_float", "positive_int", "text"]

V = TypeVar("V")


# --- shared validators (value, what) -> checked value; ``what`` names it in the message ------------
def integer(value: Any, what: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within [minimum, maximum]; bools and floats are rejected (2.0 is not 2)."""
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if not ok or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            need = f"an integer from {minimum} to {maximum}"
        elif minimum is not None:
            need = f"an integer >= {minimum}"
        elif maximum is not None:
            need = f"an integer <= {maximum}"
        else:
            need = "an integer"
        raise ConfigError(f"{what} must be {need}, got {value!r}")
    return int(value)


def positive_int(value: Any, what: str) -> int:
    """An integer >= 1 (bools rejected)."""
    return integer(value, what, minimum=1)


def non_negative_int(value: Any, what: str) -> int:
    """An integer >= 0 (bools rejected)."""
    return integer(value, what, minimum=0)


def number(value: Any, what: str) -> float:
    """A finite real number as a float (bools, strings, NaN and infinities rejected)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def in_range(value: Any, what: str, low: float = -math.inf, high: float = math.inf, *,
             low_open: bool = False, high_open: bool = False) -> float:
    """A finite number in the interval from ``low`` to ``high`` (closed unless ``*_open``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        if high == math.inf:
            need = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif low == -math.inf:
            need = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            need = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{what} must be {need}, got {value!r}")
    return float(value)


def positive_float(value: Any, what: str) -> float:
    """A finite number > 0."""
    return in_range(value, what, 0.0, low_open=True)


def non_negative_float(value: Any, what: str) -> float:
    """A finite number >= 0."""
    return in_range(value, what, 0.0)


def one_of(value: Any, what: str, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices`` (strings compared exactly)."""
    options = list(choices)
    if isinstance(value, (list, dict, set)) or value not in options:
        raise ConfigError(f"{what} must be one of {', '.join(map(str, options))}, got {value!r}")
    return value


def flag(value: Any, what: str) -> bool:
    """A real bool (1 and "yes" are rejected: a typo should not silently mean true)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {value!r}")
    return value


def text(value: Any, what: str) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, got {value!r}")
    return value


def optional(value: Any, what: str, check: Callable[..., V], *args: Any, **kwargs: Any) -> V | None:
    """``None``, or ``value`` checked by ``check``: ``optional(v, "refine", positive_int)``."""
    return None if value is None else check(value, what, *args, **kwargs)


# --- the base class ---------------------------------------------------------------------------------
class Params(dict):
    """A component's validated configuration: a dict, also callable — ``c.params()`` is a plain copy."""

    def __call__(self) -> dict[str, Any]:
        return dict(self)


class Component:
    """A named component with validated parameters (see the module docstring).

    Subclasses set ``kind`` once per family (the word used in messages: ``"reranker"``) and
    ``defaults`` per component, and override :meth:`validate`.
    """

    name: ClassVar[str] = ""   # set by Registry.register on the registered class; never by hand
    kind: ClassVar[str] = "component"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        self.config: Params = Params(self.resolve(params))
        self.validate()

    # --- parameters -----------------------------------------------------------------------------
    @classmethod
    def parameter_defaults(cls) -> dict[str, Any]:
        """Every accepted parameter with its default (``defaults``; a family may add shared ones)."""
        return dict(cls.defaults)

    @classmethod
    def label(cls) -> str:
        """``kind 'name'`` (just ``kind`` when unregistered): how messages refer to this component."""
        return f"{cls.kind} {cls.name!r}" if cls.name else cls.kind

    @classmethod
    def resolve(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` over the defaults; a one-line ConfigError naming the valid ones for an unknown key."""
        accepted = cls.parameter_defaults()
        unknown = [key for key in params if key not in accepted]
        if unknown:
            valid = ", ".join(accepted) or "none"
            raise ConfigError(f"{cls.label()} has no parameter {', '.join(map(str, unknown))}; valid: {valid}")
        return {**accepted, **params}

    def validate(self) -> None:
        """Check :attr:`config`; raise a one-line ConfigError (override; call ``check``)."""

    def check(self, key: str, validator: Callable[..., V], *args: Any, **kwargs: Any) -> V:
        """``validator(config[key], "<kind 'name'>: key", ...)``: the checked value (config unchanged)."""
        return validator(self.config[key], f"{self.label()}: {key}", *args, **kwargs)

    @property
    def params(self) -> Params:
        """The configuration: ``params()`` a JSON-ready copy, ``params[key]`` one value."""
        return self.config

    def __repr__(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.name}:{args}" if args else self.name

    @classmethod
    def summary(cls) -> str:
        """One line for help texts: ``name(k=v, ...)``."""
        args = ", ".join(f"{k}={v!r}" for k, v in cls.parameter_defaults().items())
        return f"{cls.name}({args})" if args else cls.name
