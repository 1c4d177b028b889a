"""Queries beyond a photo: a reference image plus a modification text (TIRG), sentences and
scene-graph relations, with the generated CSS-like scenes that prove them (see docs/queries.md).

Submodules are imported by name (``matchlens.queries.scenes``, ``.textenc``, ``.composers``, ...)
so that importing the package stays cheap.
"""
