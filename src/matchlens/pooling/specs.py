"""The pooling registry: names, parameters, defaults and validation — without importing torch.

Each pooling is a :class:`PoolingSpec` registered in :data:`POOLINGS`. The spec is the
configuration (a :class:`~matchlens.components.Component`); :meth:`PoolingSpec.build` makes the
``nn.Module`` and only then imports torch. The pipeline spec (:mod:`matchlens.config`) validates
pooling names against this registry, so it stays cheap to import.

A new pooling needs two files (see docs/extending.md): its maths, a function
``name(x, **params)`` in :mod:`matchlens.pooling.functional`, and its spec class here. Without a
``module``, the built module calls ``functional.<name>(x, **config)``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from matchlens.components import Component, flag, positive_float, positive_int
from matchlens.errors import ConfigError
from matchlens.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from matchlens.pooling.modules import Pooling

__all__ = ["POOLINGS", "PoolingSpec", "file_id", "make_pooling", "pooling_names"]


class PoolingSpec(Component):
    """A pooling's validated configuration; :meth:`build` returns its ``nn.Module``.

    ``module``: a class of :mod:`matchlens.pooling.modules` taking the config as keywords
    (for state such as GeM's learnable ``p``); empty (the default): a generic module that calls
    the function named like the registry entry in :mod:`matchlens.pooling.functional`.
    """

    kind: ClassVar[str] = "pooling"
    module: ClassVar[str] = ""

    def build(self) -> "Pooling":
        """The ``nn.Module`` (``forward((B, C, H, W)) -> (B, C)``, not normalised); imports torch."""
        import matchlens.pooling.functional as functional  # deferred: torch
        import matchlens.pooling.modules as modules  # deferred: torch

        if self.module:
            built = getattr(modules, self.module)(**self.config)
        else:
            built = modules.FunctionalPooling(getattr(functional, self.name), **self.config)
        built.name = self.name
        return built

    @classmethod
    def pin(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The parameters a pipeline spec stores for ``params``: unchanged (defaults stay implicit, so
        existing indexes keep their fingerprints), except for poolings that read a file."""
        return params

    def positive_floats(self, *keys: str) -> None:
        """Check each key is a finite number > 0 and store it as a float."""
        for key in keys:
            self.config[key] = self.check(key, positive_float)


POOLINGS: Registry[type[PoolingSpec]] = Registry("pooling")


@POOLINGS.register("mac")
class MACSpec(PoolingSpec):
    """Max pooling of the positive part of each channel."""

    module = "MAC"


@POOLINGS.register("spoc")
class SPoCSpec(PoolingSpec):
    """Sum pooling, by default weighted by the Gaussian centre prior."""

    module = "SPoC"
    defaults: ClassVar[dict[str, Any]] = {"centre_prior": True}

    def validate(self) -> None:
        self.check("centre_prior", flag)


@POOLINGS.register("gem")
class GeMSpec(PoolingSpec):
    """Generalised-mean pooling; ``learn_p`` makes ``p`` a trainable parameter."""

    module = "GeM"
    defaults: ClassVar[dict[str, Any]] = {"p": 3.0, "eps": 1e-6, "learn_p": False}

    def validate(self) -> None:
        self.positive_floats("p", "eps")
        self.check("learn_p", flag)


@POOLINGS.register("rmac")
class RMACSpec(PoolingSpec):
    """Regional MAC over cirtorch's rigid multi-scale grid."""

    module = "RMAC"
    defaults: ClassVar[dict[str, Any]] = {"levels": 3, "eps": 1e-6}

    def validate(self) -> None:
        self.check("levels", positive_int)
        self.positive_floats("eps")


@POOLINGS.register("crow")
class CroWSpec(PoolingSpec):
    """Cross-dimensional (spatial x channel) weighted sum pooling."""

    module = "CroW"
    defaults: ClassVar[dict[str, Any]] = {"a": 2.0, "b": 2.0, "eps": 1e-6}

    def validate(self) -> None:
        self.positive_floats("a", "b", "eps")


@POOLINGS.register("learned-rmac")
class LearnedRMACSpec(PoolingSpec):
    """R-MAC over regions a trained proposal head picks (Gordo et al.): ``head=FILE`` from
    ``matchlens train-regions``; the file's id is recorded so a changed file is refused."""

    module = "LearnedRMACPooling"
    defaults: ClassVar[dict[str, Any]] = {"head": "", "head_id": ""}

    def validate(self) -> None:
        head = str(self.config["head"] or "")
        if not head:
            raise ConfigError("pooling 'learned-rmac' needs head=FILE (from 'matchlens train-regions INDEX --out FILE')")
        path = Path(head).expanduser()
        self.config["head"] = str(path.resolve())
        if not self.config["head_id"] and path.is_file():
            self.config["head_id"] = file_id(path)

    @classmethod
    def pin(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The head's absolute path and the id of the file it names now (validated)."""
        return dict(cls(**params).config)


def file_id(path: str | os.PathLike) -> str:
    """The first 16 hex digits of a file's SHA-256: what an index records of a regions head."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def make_pooling(name: str, **params: Any) -> "Pooling":
    """Build the pooling module registered as ``name`` (case-insensitive) with ``params``.

    Raises ConfigError for an unknown name, an unknown parameter or an invalid value.
    """
    return POOLINGS.get(name)(**params).build()


def pooling_names() -> list[str]:
    """Registered pooling names, sorted."""
    return POOLINGS.names()
