"""Thin ``nn.Module`` wrappers around :mod:`matchlens.pooling.functional`.

Build them with :func:`~matchlens.pooling.make_pooling`: the registered
:class:`~matchlens.pooling.specs.PoolingSpec` validates the parameters first (so a bad config
fails before any image is read) and sets the module's ``name``. ``params()`` returns the
JSON-serialisable configuration, and ``make_pooling(module.name, **module.params())`` rebuilds
an equivalent module; that is what the pipeline spec stores.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from matchlens.errors import ConfigError

from . import functional as F
from .proposals import load_head
from .specs import POOLINGS, file_id, make_pooling, pooling_names

__all__ = ["CroW", "FunctionalPooling", "GeM", "LearnedRMACPooling", "MAC", "POOLINGS", "Pooling", "RMAC", "SPoC", "make_pooling",
           "pooling_names"]


class Pooling(nn.Module):
    """Base of the pooling modules: ``forward(x: (B, C, H, W)) -> (B, C)``, not normalised.

    ``config`` holds the (validated) keyword arguments; ``name`` is the registry name, set by
    :meth:`PoolingSpec.build <matchlens.pooling.specs.PoolingSpec.build>`.
    """

    name: str = ""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = dict(config)

    def params(self) -> dict[str, Any]:
        """The JSON-serialisable keyword arguments that rebuild this module."""
        return dict(self.config)

    def extra_repr(self) -> str:
        # nn.Module.__repr__ wraps this as "GeM(p=3.0, eps=1e-06, learn_p=False)".
        return ", ".join(f"{key}={value!r}" for key, value in self.params().items())


class FunctionalPooling(Pooling):
    """A pooling that is just its function: ``function(x, **config)`` (new poolings need no class)."""

    def __init__(self, function: Callable[..., torch.Tensor], **config: Any) -> None:
        super().__init__(**config)
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x, **self.config)


class MAC(Pooling):
    """Max pooling of the positive part of each channel (:func:`~.functional.mac`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.mac(x)


class SPoC(Pooling):
    """Sum pooling, by default weighted by the Gaussian centre prior (:func:`~.functional.spoc`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.spoc(x, **self.config)


class GeM(Pooling):
    """Generalised-mean pooling (:func:`~.functional.gem`).

    With ``learn_p`` the exponent is an ``nn.Parameter`` of shape ``(1,)`` named ``p`` (the
    layout of cirtorch's ``GeM``, so its ``pool.p`` checkpoint entries load); fine-tuning then
    learns it, and :meth:`params` reports the current value.
    """

    def __init__(self, p: float, eps: float, learn_p: bool) -> None:
        super().__init__(eps=eps, learn_p=learn_p)
        self.eps, self.learn_p = eps, learn_p
        self.p: float | nn.Parameter = nn.Parameter(torch.full((1,), float(p))) if learn_p else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gem(x, p=self.p, eps=self.eps)

    def params(self) -> dict[str, Any]:
        p = float(self.p.detach()) if isinstance(self.p, torch.Tensor) else self.p
        return {"p": p, "eps": self.eps, "learn_p": self.learn_p}


class RMAC(Pooling):
    """Regional MAC over cirtorch's rigid multi-scale grid (:func:`~.functional.rmac`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rmac(x, **self.config)


class CroW(Pooling):
    """Cross-dimensional (spatial × channel) weighted sum pooling (:func:`~.functional.crow`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.crow(x, **self.config)


class LearnedRMACPooling(Pooling):
    """R-MAC over the regions a trained proposal head picks (:mod:`.proposals`, Gordo et al.).

    ``head`` is the file ``matchlens train-regions`` wrote and ``head_id`` its recorded id: a
    file changed since the index was built would give descriptors that no longer compare with
    the stored ones, so it is refused. Pooling and masks are the ones the head was trained with.
    """

    def __init__(self, head: str, head_id: str) -> None:
        super().__init__(head=head, head_id=head_id)
        self.model, self.meta = load_head(head)
        if head_id and file_id(head) != head_id:
            raise ConfigError(f"regions head {head} changed since the index was built (id {head_id}, now "
                              f"{file_id(head)}); restore it or rebuild the index")

    def check_backbone(self, backbone: str, channels: int) -> None:
        """A one-line ConfigError when the head was trained on another backbone's map."""
        trained = self.meta.get("backbone")
        if trained and trained != backbone or self.model.channels != channels:
            raise ConfigError(f"regions head {self.config['head']} was trained on {trained} ({self.model.channels} "
                              f"channels), this pipeline runs {backbone} ({channels}); train one on this index "
                              f"with 'matchlens train-regions'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(fmap) for fmap in x.float()])
