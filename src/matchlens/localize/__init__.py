"""Visual localisation by retrieval (Kapture, P1c): maps from posed images and 6-DoF query poses.

:mod:`.cameras` (posed cameras and their files), :mod:`.mapping` (build a map: retrieval pairs,
RootSIFT matches verified by the known poses, triangulation), :mod:`.mapstore` (the map on disk),
:mod:`.localizer` (retrieve, match, lift to 3D, PnP + RANSAC with pycolmap), :mod:`.presets` (the
paper's COLMAP settings), :mod:`.evaluation` (accuracy bins and medians), :mod:`.plot` (top-down
PNG), :mod:`.kapture_io` / :mod:`.colmap_io` (kapture and COLMAP import and export).

This layer sits beside ``train`` and ``explain``: it uses the search pipeline for retrieval and
never re-implements search.
"""

from matchlens.localize.cameras import CameraModel, PosedCamera, read_cameras_json
from matchlens.localize.localizer import Localization, Localizer
from matchlens.localize.mapping import MapSettings, build_map
from matchlens.localize.mapstore import SceneMap, load_map
from matchlens.localize.presets import PRESETS

__all__ = ["PRESETS", "CameraModel", "Localization", "Localizer", "MapSettings", "PosedCamera", "SceneMap",
           "build_map", "load_map", "read_cameras_json"]
