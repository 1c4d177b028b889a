"""The ``matchlens`` command: a thin layer over :mod:`matchlens.api` (parse, call, print).

Every user-caused failure prints one line (``matchlens: error: ...``) and exits non-zero; a
traceback is only shown with ``MATCHLENS_DEBUG=1``. Each command lives in a module of this
package and imports its own code only when it runs, so ``matchlens --help`` starts at once.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer

# Importing a command module registers its commands; this order is the order of `matchlens --help`.
from matchlens.cli import collection  # noqa: F401
from matchlens.cli import searching  # noqa: F401
from matchlens.cli import evaluation  # noqa: F401
from matchlens.cli import training  # noqa: F401
from matchlens.cli import serving  # noqa: F401
from matchlens.cli import evidence  # noqa: F401
from matchlens.cli import kinds  # noqa: F401
from matchlens.cli import localization  # noqa: F401
from matchlens.cli import regional  # noqa: F401
from matchlens.cli import copies  # noqa: F401
from matchlens.cli import quality  # noqa: F401
from matchlens.cli import recognition  # noqa: F401
from matchlens.cli import relations  # noqa: F401
from matchlens.cli import queries  # noqa: F401
from matchlens.cli import text_queries  # noqa: F401
from matchlens.cli import learned_regions  # noqa: F401
from matchlens.cli.common import app, err, out, progress_factory

__all__ = ["app", "err", "main", "out", "progress_factory"]


def _fill_help(command, args: list[str]) -> None:
    """Put the registries' names into the help texts of the subcommand whose --help is asked
    for (only then: the families' modules need not be imported for anything else)."""
    sub = next((command.commands[a] for a in args if a in getattr(command, "commands", {})), None)
    if sub is None:
        return
    texts = [sub.help or ""] + [getattr(p, "help", None) or "" for p in sub.params]
    wanted = {key for key in _FAMILIES if any("{" + key + "}" in t for t in texts)}
    names = {key: _family(key).help_text() for key in wanted}

    def fill(text: str) -> str:
        for key, value in names.items():
            text = text.replace("{" + key + "}", value)
        return text

    sub.help = fill(sub.help) if sub.help else sub.help
    for param in sub.params:
        if getattr(param, "help", None):
            param.help = fill(param.help)


_FAMILIES = {  # help placeholder → (module, registry): each registry is the only list of its names
    "rerankers": ("matchlens.rerank", "RERANKERS"), "poolings": ("matchlens.pooling.specs", "POOLINGS"),
    "whitenings": ("matchlens.whitening", "WHITENINGS"), "runtimes": ("matchlens.extract.runtime", "RUNTIMES"),
    "backends": ("matchlens.index.backends", "BACKENDS"), "losses": ("matchlens.train.losses", "LOSSES"),
    "encodings": ("matchlens.ensemble.kind+matchlens.regional.kind", "ENCODINGS"), "fusions": ("matchlens.fusion", "FUSIONS"),
    "normalisers": ("matchlens.fusion", "NORMALISERS"), "metrics": ("matchlens.evidence.tensor", "METRICS"),
    "samplers": ("matchlens.train.sampling", "SAMPLERS"), "recognizers": ("matchlens.recognize.heads", "METHODS"),
    "objectives": ("matchlens.regional.fit", "OBJECTIVES"), "selfsups": ("matchlens.train.selfsup", "METHODS"),
    "relation_parts": ("matchlens.queries.relations", "QUERY_PARTS"),
    "composers": ("matchlens.queries.composers", "COMPOSERS"),
    "text_encoders": ("matchlens.queries.textenc", "TEXT_ENCODERS"),
    "composer_losses": ("matchlens.queries.composer_losses", "COMPOSER_LOSSES"),
    "registration": ("matchlens.localize.presets", "PRESETS"), "contrasts": ("matchlens.local.features", "CONTRASTS"),
}


def _family(key: str):
    """The registry behind a help placeholder."""
    modules, attribute = _FAMILIES[key]
    *registering, module = modules.split("+")  # the kinds register into classic's ENCODINGS on import
    for name in registering:
        importlib.import_module(name)
    return getattr(importlib.import_module(module), attribute)


def _click_error() -> type[Any]:
    """ClickException of the click that typer runs on (recent typer vendors its own)."""
    try:
        from typer._click.exceptions import ClickException as VendoredClickException
    except ImportError:  # older typer: plain click
        from click.exceptions import ClickException
        return ClickException
    return VendoredClickException


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the typer app, turning every error into one line and an exit code."""
    from matchlens.errors import MatchlensError

    click_error = _click_error()
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    if "--help" in args:
        _fill_help(command, args)
    try:
        code = command.main(args=argv, prog_name="matchlens", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:  # --help and friends
        sys.exit(exc.exit_code)
    except MatchlensError as exc:
        err.print(f"matchlens: error: {exc}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("matchlens: interrupted", markup=False)
        sys.exit(130)
    except click_error as exc:  # usage errors: click's own message (usage line + one error line)
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line unless debugging
        if os.environ.get("MATCHLENS_DEBUG"):
            raise
        err.print(f"matchlens: internal error: {type(exc).__name__}: {exc} (MATCHLENS_DEBUG=1 shows the traceback)",
                  markup=False, highlight=False)
        sys.exit(1)

