"""Post-processing of descriptors: PCA whitening, learned whitening (Lw, from pairs), or none.

Every whitening has the same interface: ``fit(X)`` / ``transform(X)`` / ``fit_transform(X)``
on ``(n, d)`` arrays, ``output_dim``, ``params()``, ``save(path)`` and ``load(path)``.
They are chosen by name with :func:`make_whitening`; :func:`load_whitening` reads any saved one.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from matchlens.errors import ConfigError, WeightsError
from matchlens.registry import Registry

from .learned import LearnedWhitening
from .pca import IdentityWhitening, PCAWhitening, read_npz

__all__ = ["WHITENINGS", "IdentityWhitening", "LearnedWhitening", "PCAWhitening", "load_whitening", "make_whitening",
           "whitening_names"]

WHITENINGS: Registry[type[PCAWhitening] | type[IdentityWhitening] | type[LearnedWhitening]] = Registry("whitening")
WHITENINGS.register(IdentityWhitening.name)(IdentityWhitening)
WHITENINGS.register(PCAWhitening.name)(PCAWhitening)
WHITENINGS.register(LearnedWhitening.name)(LearnedWhitening)  # fitted from pairs (fit_pairs), not fit()


def make_whitening(name: str, **params: Any) -> PCAWhitening | LearnedWhitening | IdentityWhitening:
    """An unfitted whitening registered as ``name`` ("none", "pcaw") with ``params``.

    Raises ConfigError for an unknown name, an unknown parameter or an invalid value.
    """
    if not isinstance(name, str):
        known = ", ".join(whitening_names())
        raise ConfigError(f"whitening name must be a string; choose one of: {known}")
    factory = WHITENINGS.get(name)
    accepted = [p for p in inspect.signature(factory).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise ConfigError(f"whitening {name!r} has no parameter {', '.join(unknown)}; "
                          f"valid: {valid}")
    return factory(**params)


def whitening_names() -> list[str]:
    """Registered whitening names, sorted."""
    return WHITENINGS.names()


def load_whitening(path: str | os.PathLike) -> PCAWhitening | LearnedWhitening | IdentityWhitening:
    """Whatever whitening :meth:`save` wrote to ``path``, dispatched on the kind stored in it."""
    kind = str(read_npz(path, kind=None).get("kind", ""))
    if kind not in WHITENINGS:
        raise WeightsError(f"whitening file {path} holds unknown kind {kind or '(none)'!r}")
    return WHITENINGS.get(kind).load(path)
