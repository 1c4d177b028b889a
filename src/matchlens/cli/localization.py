"""Visual localisation by retrieval: ``map``, ``localize``, ``eval-loc`` and ``export``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from matchlens.cli.common import app, err, out, progress_factory

FUSE_HELP = "Retrieve by a descriptor kind or a late fusion of kinds, e.g. cnn+densevlad:ghm (see 'matchlens encode --help')."
PRESET_HELP = "COLMAP registration settings of the Kapture paper's Table 1: {registration}."
# The localisation options that localize and eval-loc share (one definition, one help text).
MapOpt = typer.Argument(..., help="Map folder (matchlens map).")
LocIndexOpt = typer.Option(None, "--index", "-i", help="Index to retrieve with (default: the one the map was built with).")
LocTopOpt = typer.Option(5, "-k", "--top", min=1, help="Retrieved map images to match against.")
LocFuseOpt = typer.Option(None, "--fuse", help=FUSE_HELP)
LocPresetOpt = typer.Option("config1", "--preset", help=PRESET_HELP)


def _cameras(cameras: Optional[Path], kapture: Optional[Path], colmap: Optional[Path]):
    """The posed cameras from exactly one of the three sources."""
    from matchlens.errors import MapError

    given = [s for s in (cameras, kapture, colmap) if s is not None]
    if len(given) != 1:
        raise MapError("give the map's cameras with exactly one of --cameras FILE, --kapture DIR or --colmap DIR")
    if cameras is not None:
        from matchlens.localize.cameras import read_cameras_json
        return read_cameras_json(cameras)
    if kapture is not None:
        from matchlens.localize.kapture_io import read_kapture
        return read_kapture(kapture)
    from matchlens.localize.colmap_io import read_colmap
    assert colmap is not None  # exactly one source was given (checked above)
    return read_colmap(colmap)


def _names(split: Optional[Path], key: str) -> Optional[list[str]]:
    """Image names from a split.json (its ``key`` list) or a text file (one name per line)."""
    from matchlens.errors import MapError

    if split is None:
        return None
    try:
        text = split.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MapError(f"cannot read {split}: {error}") from None
    if split.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        names = json.loads(text)[key]
    except (ValueError, KeyError, TypeError):
        raise MapError(f"{split} must be a JSON object with a {key!r} list of image names") from None
    return [str(n) for n in names]


def _index_for_map(index_dir: Path, scene: Path, names: list[str], progress):
    """The index to retrieve with: opened, or built over the map images when it does not exist."""
    from matchlens.api import build_index, open_index

    if index_dir.exists():
        return open_index(index_dir)
    out.print(f"building index {index_dir} over the {len(names)} map images", markup=False, highlight=False)
    return build_index([str(scene / n) for n in names], index_dir, progress=progress)


@app.command("map")
def map_(
    scene: Optional[Path] = typer.Argument(None, help="Folder of the map images (names in the cameras file are relative to it; default with --kapture: its sensors/records_data)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Map folder to write."),
    index_dir: Path = typer.Option(..., "--index", "-i", help="Index to retrieve mapping pairs with (built over the map images if missing)."),
    cameras: Optional[Path] = typer.Option(None, "--cameras", help="cameras.json: {name: {K, R (world-to-camera), C, width, height}}."),
    kapture: Optional[Path] = typer.Option(None, "--kapture", help="Read the cameras from a kapture dataset folder."),
    colmap: Optional[Path] = typer.Option(None, "--colmap", help="Read the cameras from a COLMAP model folder (cameras/images .bin or .txt)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Only these images: split.json (its 'map' list) or a text file of names."),
    k: int = typer.Option(10, "-k", "--pairs-k", min=1, help="Mapping pairs: each image with its top-k retrieved images."),
    fuse: Optional[str] = typer.Option(None, "--fuse", help=FUSE_HELP),
    max_keypoints: int = typer.Option(4096, "--max-keypoints", min=16, help="RootSIFT keypoints per image."),
    contrast: str = typer.Option("clahe", "--contrast", help="Grayscale normalisation before SIFT, for the map and its queries: {contrasts}."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing map."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Build a localisation map from posed images: retrieval pairs, RootSIFT matches verified by the
    known poses, tracks, triangulation and reprojection filtering (resumes an interrupted run)."""
    from matchlens.localize.mapping import MapSettings, build_map

    posed = _cameras(cameras, kapture, colmap)
    if scene is None:
        scene = kapture / "sensors" / "records_data" if kapture is not None else Path(".")
    names = _names(split, "map")
    with progress_factory(not quiet) as progress:
        index = _index_for_map(index_dir, scene, names if names is not None else sorted(posed), progress)
        scene_map = build_map(index, scene, posed, out_dir, MapSettings(k=k, fuse=fuse, max_keypoints=max_keypoints,
                                                                 contrast=contrast),
                              names=names, replace=replace, progress=progress)
    counts, timings = scene_map.manifest["counts"], scene_map.manifest["timings_s"]
    out.print(f"map {scene_map.root}: {counts['images']} images, {counts['pairs']} pairs, {counts['points']:,} points "
              f"({counts['observations']:,} observations) in {sum(timings.values()):.1f} s", markup=False,
              highlight=False)


def _query_camera(path: Path, intrinsics: Optional[str], camera_model: Optional[str], truth: Optional[dict]):
    """The camera of one query: --intrinsics, --camera-model, its entry in --cameras, or None (estimated)."""
    from matchlens.io.images import image_size
    from matchlens.localize.cameras import parse_camera_model, parse_intrinsics

    if camera_model:
        return parse_camera_model(camera_model)
    if intrinsics:
        return parse_intrinsics(intrinsics, *image_size(path))
    if truth is not None and path.name in truth:
        return truth[path.name].camera
    return None


def _open_localizer(map_dir: Path, index_dir: Optional[Path], k: int, fuse: Optional[str], preset: str):
    from matchlens.api import open_index
    from matchlens.localize.localizer import Localizer
    from matchlens.localize.mapstore import load_map

    scene_map = load_map(map_dir)
    index = open_index(index_dir or scene_map.manifest["index"])
    return Localizer(scene_map, index, k=k, fuse=fuse, preset=preset)


@app.command()
def localize(
    map_dir: Path = MapOpt,
    query: Optional[Path] = typer.Argument(None, help="Query image (or give --queries)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Many queries: a folder (recursive) or a list file."),
    intrinsics: Optional[str] = typer.Option(None, "--intrinsics", help="Query camera fx,fy,cx,cy in pixels (default: focal estimated)."),
    camera_model: Optional[str] = typer.Option(None, "--camera-model", help="Query camera as COLMAP 'MODEL WIDTH HEIGHT PARAMS...'."),
    cameras: Optional[Path] = typer.Option(None, "--cameras", help="cameras.json giving each query's intrinsics by file name."),
    index_dir: Optional[Path] = LocIndexOpt, k: int = LocTopOpt, fuse: Optional[str] = LocFuseOpt,
    preset: str = LocPresetOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one line per query with --queries)."),
) -> None:
    """Localise photos in a map: status, R (world-to-camera), t, camera centre C, inliers, the retrieved
    images and timings. A query that cannot be localised is reported as failed with the reason."""
    from matchlens.errors import ConfigError
    from matchlens.io.collection import scan_source
    from matchlens.localize.cameras import read_cameras_json

    if (query is None) == (queries is None):
        raise ConfigError("give one query image or --queries FOLDER_OR_LIST")
    localizer = _open_localizer(map_dir, index_dir, k, fuse, preset)
    truth = read_cameras_json(cameras) if cameras is not None else None
    paths = [Path(p) for p in scan_source(queries)] if queries is not None else [Path(str(query))]
    failed = 0
    for path in paths:
        result = _localize_one(localizer, path, intrinsics, camera_model, truth, batch=queries is not None)
        failed += not result.ok
        _print_localization(result, as_json, jsonl=queries is not None)
    if query is not None and failed:
        raise typer.Exit(1)


def _localize_one(localizer, path: Path, intrinsics, camera_model, truth, batch: bool):
    """One query's answer; in a batch an unreadable query is a failed line, not the end of the batch."""
    from matchlens.errors import ImageLoadError
    from matchlens.localize.localizer import Localization

    try:
        return localizer.localize(path, _query_camera(path, intrinsics, camera_model, truth))
    except ImageLoadError as error:
        if not batch:
            raise
        return Localization(str(path), "failed", reason=str(error))


def _print_localization(result, as_json: bool, jsonl: bool) -> None:
    if as_json or jsonl:
        sys.stdout.write(json.dumps(result.to_dict(), indent=None if jsonl else 1) + "\n")
        return
    if not result.ok:
        out.print(f"{result.query}: failed: {result.reason} (retrieved {', '.join(result.retrieved) or 'nothing'})",
                  markup=False, highlight=False)
        return
    C = ", ".join(f"{v:.3f}" for v in result.C)
    timings = ", ".join(f"{k} {v:.0f}" for k, v in result.timings_ms.items())
    out.print(f"{result.query}: ok, C = ({C}), {result.inliers}/{result.correspondences} inliers; "
              f"retrieved {', '.join(result.retrieved)}; ms: {timings}", markup=False, highlight=False)
    for row in result.R:
        out.print("  R " + " ".join(f"{v:+.5f}" for v in row), markup=False, highlight=False)
    out.print("  t " + " ".join(f"{v:+.4f}" for v in result.t), markup=False, highlight=False)


def _eval_queries(queries: Path, truth: dict, scene_map, split: Optional[Path]) -> list[tuple[str, Path]]:
    """(name, path) of the evaluation queries: --split's 'queries', else every image of the folder
    with a camera that is not a map image."""
    from matchlens.errors import MapError

    mapped = {im.name for im in scene_map.images}
    names = _names(split, "queries")
    if names is None:
        names = sorted(p.name for p in queries.iterdir() if p.name in truth and p.name not in mapped) \
            if queries.is_dir() else []
    missing = [n for n in names if n not in truth]
    if missing:
        raise MapError(f"no ground-truth camera for query {missing[0]}")
    if not names:
        raise MapError(f"no evaluation queries: {queries} holds no image with a camera that is not a map image")
    return [(n, queries / n) for n in names]


@app.command("eval-loc")
def eval_loc(
    map_dir: Path = MapOpt,
    queries: Path = typer.Option(..., "--queries", help="Folder of the query images."),
    cameras: Path = typer.Option(..., "--cameras", help="Ground-truth cameras of the queries (cameras.json)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Only these queries: split.json ('queries') or a list of names."),
    index_dir: Optional[Path] = LocIndexOpt, k: int = LocTopOpt, fuse: Optional[str] = LocFuseOpt,
    preset: str = LocPresetOpt,
    unknown_intrinsics: bool = typer.Option(False, "--unknown-intrinsics", help="Do not give the true intrinsics: estimate the focal length."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a top-down PNG of the map, the true and the estimated query cameras."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary and per-query results as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Localise posed queries and print the share within (0.25 m, 2°), (0.5 m, 5°), (5 m, 10°) and the
    median errors, against the baseline 'pose of the top-1 retrieved map image'."""
    from matchlens.localize.cameras import read_cameras_json
    from matchlens.localize.evaluation import evaluate_localization

    localizer = _open_localizer(map_dir, index_dir, k, fuse, preset)
    truth = read_cameras_json(cameras)
    names = _eval_queries(queries, truth, localizer.map, split)
    with progress_factory(not quiet and not as_json) as progress:
        evaluation = evaluate_localization(localizer, names, truth, not unknown_intrinsics, progress)
    if plot is not None:
        _plot(localizer.map, evaluation, truth, plot, err if as_json else out)
    if as_json:
        sys.stdout.write(json.dumps(_json_safe(evaluation.to_dict()), indent=1) + "\n")
        return
    _print_summary(evaluation.summary, f"{len(names)} queries, top-{k}, {preset}" + (f", {fuse}" if fuse else ""))


def _json_safe(value):
    """inf → null, recursively (JSON has no infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _print_summary(summary: dict, title: str) -> None:
    from matchlens.localize.evaluation import THRESHOLDS

    bins = [f"{m}m,{d}deg" for m, d in THRESHOLDS]
    table = Table("method", *[f"% ({m} m, {d}°)" for m, d in THRESHOLDS], "median pos (m)", "median rot (°)",
                  "localised", title=title)
    for method, s in summary.items():
        table.add_row(method, *[f"{s[b]:.1f}" for b in bins], f"{s['median_position']:.3f}",
                      f"{s['median_rotation']:.2f}", f"{s['localised']:.0f}/{s['queries']:.0f}")
    out.print(table)


def _plot(scene_map, evaluation, truth: dict, path: Path, console) -> None:
    from matchlens.localize.plot import QueryPose, plot_map

    poses = [QueryPose(o.result.query, o.result.R, o.result.C, truth[o.result.query].R, truth[o.result.query].C)
             for o in evaluation.outcomes]
    plot_map(scene_map, poses, path)
    console.print(f"plot: {path}", markup=False, highlight=False)  # stderr with --json: stdout stays JSON


@app.command()
def export(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    kapture: Optional[Path] = typer.Option(None, "--kapture", help="Write a kapture folder: sensors, global features, keypoints, descriptors, matches, pairs."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Write the retrieval pairs file (one 'name0 name1' line per pair, as hloc and COLMAP read)."),
    pairs_style: str = typer.Option("hloc", "--pairs-style", help="hloc ('name0 name1') or kapture (its pairsfile with scores)."),
    map_dir: Optional[Path] = typer.Option(None, "--map", help="Take cameras, keypoints and matches from this map."),
    k: int = typer.Option(20, "-k", "--top", min=1, help="Retrieval pairs: each image with its top-k."),
    fuse: Optional[str] = typer.Option(None, "--fuse", help=FUSE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Export an index for kapture, COLMAP and hloc: global features, RootSIFT keypoints and
    descriptors, verified matches and the retrieval pairs."""
    from matchlens.api import open_index
    from matchlens.errors import ConfigError
    from matchlens.localize.kapture_io import export_kapture, write_pairs
    from matchlens.localize.mapstore import load_map

    if kapture is None and pairs is None:
        raise ConfigError("give --kapture DIR and/or --pairs FILE")
    index = open_index(index_dir)
    scene_map = load_map(map_dir) if map_dir is not None else None
    if pairs is not None:
        count = write_pairs(index, pairs, k=k, fuse=fuse, style=pairs_style, scene_map=scene_map)
        out.print(f"pairs: {count} lines in {pairs}", markup=False, highlight=False)
    if kapture is not None:
        with progress_factory(not quiet) as progress:
            report = export_kapture(index, kapture, scene_map=scene_map, k=k, fuse=fuse, progress=progress)
        out.print(f"kapture: {kapture} ({', '.join(f'{key} {value}' for key, value in report.items())})",
                  markup=False, highlight=False)
