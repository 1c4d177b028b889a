"""``POST /localize``: the 6-DoF pose of an uploaded photo in the map given with ``serve --map MAP``.

The map is opened and checked against the served index when the app is created, so a map that
is damaged or was built for another index stops the server at start with a one-line MapError.
Each request retrieves through the index generation that is current (images added or removed
through the API count), matches against the map and solves PnP (:mod:`matchlens.localize`).

A query that cannot be localised is an answer (200, ``status: "failed"`` and the reason), not an
error; a bad upload gets the same 4xx as ``/search``; a server without a map answers 404.

The top-down plot of a localised query is rendered once and kept in memory (the last
:data:`PLOTS_KEPT`, like the thumbnails), served at ``GET /localize/plots/{key}`` under an
unguessable key: nothing is written to disk, so there is nothing to clean up.
"""

from __future__ import annotations

import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel, Field

from matchlens.errors import MapError, MatchlensError
from matchlens.io.images import load_image
from matchlens.localize.cameras import CameraModel, parse_camera_model, parse_intrinsics
from matchlens.localize.localizer import Localization, Localizer
from matchlens.localize.mapstore import SceneMap, load_map
from matchlens.localize.plot import QueryPose, plot_map
from matchlens.localize.presets import PRESETS
from matchlens.service.live import LiveIndex, NotFound, Snapshot
from matchlens.service.uploads import probe_image, read_limited

__all__ = ["LocalizeResponse", "MapInfo", "MapService", "NoMap", "PlotStore", "install_localize_routes"]

DEFAULT_K = 5
DEFAULT_PRESET = "config1"
MAX_LOCALIZE_K = 50  # each retrieved image is matched with RootSIFT: the cost grows with k
PLOTS_KEPT = 64      # ~100 kB per plot: a few MB at most
LOCALIZERS_KEPT = 8  # (generation, k, preset) combinations kept ready
# pyplot keeps global state (current figure): two plots drawn at once in two threads would mix.
_PLOT_LOCK = threading.Lock()


class NoMap(MatchlensError):
    """``/localize`` on a server started without ``--map`` (HTTP 404)."""

    http_status = 404


class MapInfo(BaseModel):
    name: str = Field(description="The map folder's name.")
    images: int = Field(description="Posed map images.")
    points: int = Field(description="Triangulated 3D points.")
    k: int = Field(description="Default number of retrieved map images a query is matched against.")
    preset: str = Field(description="Default registration preset.")
    presets: list[str] = Field(description="Registration presets a request may choose.")
    max_k: int


class RetrievedImage(BaseModel):
    name: str
    id: int | None = Field(description="Index id of the map image (None if no longer in the index).")
    thumbnail_url: str | None


class LocalizeResponse(BaseModel):
    query: str
    status: str = Field(description="ok, or failed (then reason says why; not an HTTP error).")
    reason: str | None
    R: list[list[float]] | None = Field(description="World-to-camera rotation (3x3).")
    t: list[float] | None = Field(description="Translation: x_cam = R X + t.")
    C: list[float] | None = Field(description="Camera centre in map units.")
    inliers: int
    correspondences: int
    camera: dict[str, Any] | None = Field(description="The query camera used (COLMAP model, size, params).")
    retrieved: list[str] = Field(description="Names of the map images matched against.")
    retrieved_images: list[RetrievedImage]
    timings_ms: dict[str, float]
    plot: str | None = Field(description="URL of a top-down PNG of the map and the estimated camera (ok only).")
    k: int
    preset: str
    map: str


class PlotStore:
    """The last :data:`PLOTS_KEPT` plot PNGs by random key (thread-safe)."""

    def __init__(self, capacity: int = PLOTS_KEPT) -> None:
        self._plots: OrderedDict[str, bytes] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def put(self, png: bytes) -> str:
        """Keep ``png``; returns its key (the oldest plot is dropped when full)."""
        key = secrets.token_urlsafe(16)  # unguessable: one client cannot list another's poses
        with self._lock:
            self._plots[key] = png
            while len(self._plots) > self._capacity:
                self._plots.popitem(last=False)
        return key

    def get(self, key: str) -> bytes:
        """The PNG of ``key`` (NotFound once it has been dropped)."""
        with self._lock:
            png = self._plots.get(key)
        if png is None:
            raise NotFound("no such plot (plots are kept for the last few localisations only)")
        return png


class MapService:
    """A map served beside an index: Localizers per index generation, and the plots."""

    def __init__(self, map_dir: str | Path, live: LiveIndex, k: int = DEFAULT_K, preset: str = DEFAULT_PRESET) -> None:
        self.map: SceneMap = load_map(map_dir)
        PRESETS.get(preset)  # an unknown preset fails now, not at the first query
        self.k, self.preset = k, preset
        self.plots = PlotStore()
        self._localizers: OrderedDict[tuple[str, int, str], Localizer] = OrderedDict()
        self._lock = threading.Lock()
        self.localizer(live.snapshot(), k, preset)  # now: "built for another index" stops the server at start

    def info(self) -> MapInfo:
        """What ``GET /index`` says about the map."""
        return MapInfo(name=self.map.root.name, images=len(self.map.images), points=len(self.map.xyz), k=self.k,
                       preset=self.preset, presets=PRESETS.names(), max_k=MAX_LOCALIZE_K)

    def localizer(self, snap: Snapshot, k: int, preset: str) -> Localizer:
        """The Localizer for this generation, k and preset (built once, a few kept)."""
        key = (snap.index.generation, k, preset)
        with self._lock:
            found = self._localizers.get(key)
            if found is not None:
                self._localizers.move_to_end(key)
                return found
        # Built outside the lock (it scans the index entries); two threads may both build one: harmless.
        found = Localizer(self.map, snap.index, k=k, preset=preset)
        with self._lock:
            self._localizers[key] = found
            while len(self._localizers) > LOCALIZERS_KEPT:
                self._localizers.popitem(last=False)
        return found

    def plot_url(self, result: Localization) -> str | None:
        """Render the map with the estimated camera; its URL (None when the query failed)."""
        if not result.ok:
            return None
        with tempfile.TemporaryDirectory(prefix="matchlens-plot-") as folder, _PLOT_LOCK:
            path = Path(folder) / "plot.png"
            plot_map(self.map, [QueryPose(result.query, result.R, result.C)], path,
                     title=f"map {self.map.root.name}: {result.query}")
            png = path.read_bytes()
        return f"/localize/plots/{self.plots.put(png)}"


def query_camera(size: tuple[int, int], intrinsics: str | None, camera_model: str | None) -> CameraModel | None:
    """The query camera from the form (None: the focal length is estimated with the pose)."""
    intrinsics = intrinsics.strip() if intrinsics else None
    camera_model = camera_model.strip() if camera_model else None
    if intrinsics and camera_model:
        raise MapError("give intrinsics or camera_model, not both")
    if intrinsics:
        return parse_intrinsics(intrinsics, *size)
    if not camera_model:
        return None
    camera = parse_camera_model(camera_model)
    if (camera.width, camera.height) != size:  # intrinsics of another resolution would give a wrong pose
        raise MapError(f"camera_model is for a {camera.width}x{camera.height} image but the query is "
                       f"{size[0]}x{size[1]} (upright)")
    return camera


def _query_name(filename: str | None) -> str:
    """The client's file name without any folder, for the answer and the plot only."""
    return re.split(r"[\\/]", filename or "")[-1][:120] or "query"


def _retrieved_images(service: MapService, snap: Snapshot, names: list[str]) -> list[RetrievedImage]:
    """Index ids and thumbnails of the retrieved map images (matched by content hash)."""
    sha_of = {image.name: image.sha256 for image in service.map.images}
    id_of = {entry.sha256: entry.id for entry in snap.by_id.values()}
    found = []
    for name in names:
        image_id = id_of.get(sha_of.get(name, ""))
        found.append(RetrievedImage(name=name, id=image_id,
                                    thumbnail_url=None if image_id is None else f"/thumbnails/{image_id}"))
    return found


def _decode(upload: UploadFile, max_upload_bytes: int, max_pixels: int) -> Image.Image:
    """The upload checked as ``/search`` checks it (size, sniffed format, pixel limit), decoded at
    full size: the keypoints must be in the frame the intrinsics describe."""
    name = upload.filename or "upload"
    data = read_limited(upload, max_upload_bytes)
    probe_image(data, max_pixels, name)
    return load_image(data, max_pixels=max_pixels, name=name)


def install_localize_routes(app: FastAPI, live: LiveIndex, service: MapService | None, gate: threading.Semaphore,
                            max_upload_bytes: int, max_pixels: int) -> None:
    """``POST /localize`` and ``GET /localize/plots/{key}`` (both 404 without a map)."""

    def require_map() -> MapService:
        if service is None:
            raise NoMap("this server has no map: start it with matchlens serve INDEX --map MAP")
        return service

    @app.post("/localize", response_model=LocalizeResponse, tags=["localize"])
    def localize(
        image: Annotated[UploadFile, File(description="Query photo (any format Pillow reads; sniffed, not trusted).")],
        intrinsics: Annotated[str | None, Form(description="Query camera fx,fy,cx,cy in pixels of the upright "
                                                           "image (default: focal estimated).")] = None,
        camera_model: Annotated[str | None, Form(description="Query camera as COLMAP 'MODEL WIDTH HEIGHT "
                                                             "PARAMS...'.")] = None,
        k: Annotated[int | None, Form(ge=1, le=MAX_LOCALIZE_K, description="Retrieved map images to match.")] = None,
        preset: Annotated[str | None, Form(description="Registration preset: config1, config2 or config3.")] = None,
    ) -> LocalizeResponse:
        """Localise a photo in the map: pose (R, t, centre C), inliers, the retrieved map images and a
        plot. A photo that cannot be localised gets status ``failed`` and the reason."""
        served = require_map()
        chosen_k, chosen_preset = k or served.k, (preset or "").strip() or served.preset
        PRESETS.get(chosen_preset)  # a typo is a 400 before the upload is decoded
        snap = live.snapshot()
        start = time.perf_counter()
        with gate:
            query = _decode(image, max_upload_bytes, max_pixels)
            camera = query_camera(query.size, intrinsics, camera_model)
            decoded = time.perf_counter()
            result = served.localizer(snap, chosen_k, chosen_preset).localize(query, camera, _query_name(image.filename))
        plotted = time.perf_counter()
        plot = served.plot_url(result)
        result.timings_ms.update(decode=1000 * (decoded - start), plot=1000 * (time.perf_counter() - plotted),
                                 total=1000 * (time.perf_counter() - start))
        return LocalizeResponse(**result.to_dict(), retrieved_images=_retrieved_images(served, snap, result.retrieved),
                                plot=plot, k=chosen_k, preset=chosen_preset, map=served.map.root.name)

    @app.get("/localize/plots/{key}", tags=["localize"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "Unknown or expired plot."}})
    def localize_plot(key: str) -> Response:
        """A plot of ``POST /localize`` (the last few are kept)."""
        return Response(require_map().plots.get(key), media_type="image/png", headers={"Cache-Control": "no-store"})
