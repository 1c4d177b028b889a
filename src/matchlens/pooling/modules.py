"""Thin ``nn.Module`` wrappers around :mod:`matchlens.pooling.functional`, chosen by name.

Each module validates its parameters once, at construction, so a bad config fails before any
image is read. ``params()`` returns the JSON-serialisable configuration, and
``make_pooling(module.name, **module.params())`` rebuilds an equivalent module; that is what the
pipeline spec stores.
"""

from __future__ import annotations

import inspect
import math
from numbers import Integral, Real
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from matchlens.errors import ConfigError
from . import functional as F
from matchlens.registry import Registry

__all__ = ["CroW", "GeM", "MAC", "POOLINGS", "Pooling", "RMAC", "SPoC", "make_pooling",
           "pooling_names"]

POOLINGS: Registry[Callable[..., "Pooling"]] = Registry("pooling")


# --- parameter checks (one-line ConfigError messages) -----------------------------------------
def _number(pooling: str, key: str, value: Any, *, positive: bool = True) -> float:
    """``value`` as a finite float (> 0 when ``positive``); bools are rejected, not read as 0/1."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        need = "a finite number > 0" if positive else "a finite number"
        raise ConfigError(f"pooling {pooling!r}: {key} must be {need}, got {value!r}")
    return float(value)


def _integer(pooling: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"pooling {pooling!r}: {key} must be an integer >= {minimum}, "
                          f"got {value!r}")
    return int(value)


def _flag(pooling: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"pooling {pooling!r}: {key} must be true or false, got {value!r}")
    return value


# --- modules ------------------------------------------------------------------------------
class Pooling(nn.Module):
    """Base of the pooling modules: ``forward(x: (B, C, H, W)) -> (B, C)``, not normalised."""

    name: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        """The JSON-serialisable keyword arguments that rebuild this module."""
        return {}

    def extra_repr(self) -> str:
        # nn.Module.__repr__ wraps this as "GeM(p=3.0, eps=1e-06, learn_p=False)".
        return ", ".join(f"{key}={value!r}" for key, value in self.params().items())


@POOLINGS.register("mac")
class MAC(Pooling):
    """Max pooling of the positive part of each channel (:func:`~.functional.mac`)."""

    name = "mac"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mac(x)


@POOLINGS.register("spoc")
class SPoC(Pooling):
    """Sum pooling, by default weighted by the Gaussian centre prior (:func:`~.functional.spoc`)."""

    name = "spoc"

    def __init__(self, centre_prior: bool = True) -> None:
        super().__init__()
        self.centre_prior = _flag(self.name, "centre_prior", centre_prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.spoc(x, centre_prior=self.centre_prior)

    def params(self) -> dict[str, Any]:
        return {"centre_prior": self.centre_prior}


@POOLINGS.register("gem")
class GeM(Pooling):
    """Generalised-mean pooling (:func:`~.functional.gem`).

    With ``learn_p`` the exponent is an ``nn.Parameter`` of shape ``(1,)`` named ``p`` (the
    layout of cirtorch's ``GeM``, so its ``pool.p`` checkpoint entries load); fine-tuning then
    learns it, and :meth:`params` reports the current value.
    """

    name = "gem"

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = False) -> None:
        super().__init__()
        p = _number(self.name, "p", p)
        self.eps = _number(self.name, "eps", eps)
        self.learn_p = _flag(self.name, "learn_p", learn_p)
        self.p: float | nn.Parameter = nn.Parameter(torch.full((1,), p)) if self.learn_p else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gem(x, p=self.p, eps=self.eps)

    def params(self) -> dict[str, Any]:
        p = float(self.p.detach()) if isinstance(self.p, torch.Tensor) else self.p
        return {"p": p, "eps": self.eps, "learn_p": self.learn_p}


@POOLINGS.register("rmac")
class RMAC(Pooling):
    """Regional MAC over cirtorch's rigid multi-scale grid (:func:`~.functional.rmac`)."""

    name = "rmac"

    def __init__(self, levels: int = 3, eps: float = 1e-6) -> None:
        super().__init__()
        self.levels = _integer(self.name, "levels", levels, minimum=1)
        self.eps = _number(self.name, "eps", eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rmac(x, levels=self.levels, eps=self.eps)

    def params(self) -> dict[str, Any]:
        return {"levels": self.levels, "eps": self.eps}


@POOLINGS.register("crow")
class CroW(Pooling):
    """Cross-dimensional (spatial × channel) weighted sum pooling (:func:`~.functional.crow`)."""

    name = "crow"

    def __init__(self, a: float = 2.0, b: float = 2.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.a = _number(self.name, "a", a)
        self.b = _number(self.name, "b", b)
        self.eps = _number(self.name, "eps", eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.crow(x, a=self.a, b=self.b, eps=self.eps)

    def params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "eps": self.eps}


# --- factory ------------------------------------------------------------------------------
def _accepted(factory: Callable[..., Any]) -> list[str]:
    """Keyword parameters ``factory`` accepts, read from its signature (the single source)."""
    return [name for name, p in inspect.signature(factory).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def make_pooling(name: str, **params: Any) -> Pooling:
    """Build the pooling module registered as ``name`` (case-insensitive) with ``params``.

    Raises ConfigError for an unknown name, an unknown parameter or an invalid value.
    """
    if not isinstance(name, str):
        known = ", ".join(pooling_names())
        raise ConfigError(f"pooling name must be a string; choose one of: {known}")
    factory = POOLINGS.get(name)
    accepted = _accepted(factory)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise ConfigError(f"pooling {name!r} has no parameter {', '.join(unknown)}; valid: {valid}")
    return factory(**params)


def pooling_names() -> list[str]:
    """Registered pooling names, sorted."""
    return POOLINGS.names()
