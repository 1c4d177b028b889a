"""User-facing errors.

Every failure a user can cause (bad path, bad image, bad option, mismatched index) is raised as a
:class:`MatchlensError` whose message is one line that says what went wrong and, where it helps,
what to do. The CLI prints that line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class MatchlensError(Exception):
    """Base class of every error that is the user's input rather than a bug."""

    exit_code = 2

    def __str__(self) -> str:  # one line, always
        return " ".join(super().__str__().split())


class ImageLoadError(MatchlensError):
    """A file or buffer could not be decoded as a usable image."""


class BoxError(MatchlensError):
    """A query box is malformed or does not overlap the image."""


class ConfigError(MatchlensError):
    """A pipeline option, preset name or registry name is invalid."""


class WeightsError(MatchlensError):
    """A weights file is missing, unreadable or does not fit the architecture."""


class IndexError_(MatchlensError):
    """An index directory is missing, foreign, corrupt or incompatible with the request."""


class SourceError(MatchlensError):
    """A source folder or path list is missing, empty or unreadable."""


class MapError(MatchlensError):
    """A localisation map or its cameras file is missing, foreign, corrupt or built for another index."""
