"""``matchlens serve``: the HTTP API (FastAPI) and the offline web page for searching with evidence.

``create_app(index_dir, token=...)`` builds the app; ``serve(index_dir, host, port)`` runs it with
uvicorn until SIGINT/SIGTERM. The evidence overlay comes from :mod:`matchlens.evidence.explainers`:
the trained verifier's with ``verifier=PATH``, else spatial verification's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(index_dir, token: str | None = None, **limits) -> "FastAPI":
    """The FastAPI app serving ``index_dir`` (see :func:`matchlens.service.app.create_app`)."""
    from matchlens.service.app import create_app as _create

    return _create(index_dir, token=token, **limits)


def serve(index_dir, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, **options) -> None:
    """Run the server until SIGINT/SIGTERM (see :func:`matchlens.service.server.serve`)."""
    from matchlens.service.server import serve as _serve

    _serve(index_dir, host=host, port=port, token=token, **options)


__all__ = ["create_app", "serve"]
