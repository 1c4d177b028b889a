"""``matchlens duplicates``: groups of exact copies, near-duplicates and partial copies in an index."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Column, Table
from rich.text import Text

from matchlens.cli.common import app, err, out, progress_factory


@app.command()
def duplicates(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Global cosine floor of candidate pairs (0-1); "
                                              "the geometric thresholds stay calibrated."),
    auto: bool = typer.Option(False, "--auto", help="Calibrated thresholds (the default when --threshold is not given)."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="Neighbours per image in the kNN search for candidate pairs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (groups, pairs, evidence, counts, timings)."),
    html_dir: Optional[Path] = typer.Option(None, "--html", help="Write an HTML page of the groups into this folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Find copies in an index: exact (same bytes or pixels), near-duplicates (re-encoded, resized,
    cropped, recoloured: one affine map explains almost all matched keypoints) and partial copies
    (one or two regions replaced; needs 'matchlens encode IDX --kind regional'). Candidate pairs come
    from the index's kNN search, so the cost grows with N·k, never N². Other photographs of the same
    place or object are not copies."""
    from matchlens.api import open_index
    from matchlens.copies import DuplicateSettings, find_duplicates, thresholds_for
    from matchlens.errors import ConfigError

    if auto and threshold is not None:
        raise ConfigError("give --threshold T or --auto, not both")
    thresholds = thresholds_for(threshold)  # checks T before the index is opened
    index = open_index(index_dir)
    with progress_factory(not quiet and not as_json) as progress:
        report = find_duplicates(index, thresholds, DuplicateSettings(k=k), progress)
    page = None
    if html_dir is not None:
        from matchlens.copies.page import write_duplicates_page

        page = write_duplicates_page(report, html_dir)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=1) + "\n")
    else:
        _print_report(report, threshold is None)
    if page is not None:  # on stderr under --json, so stdout stays machine-readable
        (err if as_json else out).print(f"duplicates page: {page}", markup=False, highlight=False)


def _print_report(report, auto: bool) -> None:
    """The summary line, the notes, and one table of the groups' pairs with their evidence."""
    c = report.counts
    kinds = ", ".join(f"{c[name]} {name}" for name in _kind_names())
    floor = f"cosine floor {report.thresholds.cosine_floor:g}" + (" (calibrated)" if auto else "")
    out.print(f"{report.index}: {c['images']} images, {c['candidates']} candidate pairs (k={report.settings.k}, {floor}), "
              f"{c['groups']} groups of {c['in_groups']} images; pairs: {kinds}, {c['evaluated'] - c['accepted']} rejected",
              markup=False, highlight=False)
    for note in report.notes:
        out.print(f"note: {note}", markup=False, highlight=False)
    if not report.groups:
        return
    table = Table("group", Column("pair", overflow="fold"), "kind", Column("evidence", overflow="fold"))
    for number, group in enumerate(report.groups, 1):
        for pair in group.pairs:
            names = f"{Path(pair.paths[0]).name} ↔ {Path(pair.paths[1]).name}"
            table.add_row(str(number), Text(names), pair.kind, Text(_evidence_text(pair.evidence, report.thresholds)))
    out.print(table)
    for number, group in enumerate(report.groups, 1):
        out.print(f"group {number} ({', '.join(group.kinds)}): " + "  ".join(group.paths), markup=False, highlight=False)


def _evidence_text(e, thresholds) -> str:
    """One line: cosine, verified geometry, identical bytes/pixels, regions that differ."""
    parts = [f"cos {e.cosine:.3f}"]
    if e.same_file or e.same_pixels:
        parts.append("same bytes" if e.same_file else "same pixels")
    g = e.geometry
    if g is not None:
        parts.append(f"{g.inliers}/{g.matches} matches on one affine map ({g.ratio:.2f}, {g.residual:.2f} px), "
                     f"perspective {g.perspective:.4f}")
    if e.regions is not None:
        differ = e.differing(thresholds)
        parts.append(("differs: " + ", ".join(differ)) if differ else f"all {len(e.regions)} regions agree")
    return " · ".join(parts)


def _kind_names() -> tuple[str, ...]:
    from matchlens.copies import COPY_KINDS

    return COPY_KINDS.ordered()
