"""The HTTP API and the web page of ``matchlens serve`` (FastAPI).

Endpoints: ``POST /search``, ``POST /explain``, ``GET /images/{id}``, ``GET /thumbnails/{id}``,
``GET /index``, ``GET /health``; with the API token, ``POST /images`` and ``DELETE /images/{id}``;
with a map (``serve --map``), ``POST /localize`` (:mod:`matchlens.service.localize`).
``/`` is the search page (static files shipped in this package), ``/docs`` the OpenAPI docs, all
served from this process: nothing is fetched from the internet.

Every error is a JSON ``{"detail": "one line"}`` with a fitting status: 400 bad input or a Host
that is not allowed, 401/403 token, 404 unknown id (or no map), 408 body too slow, 409 index busy,
413 too large, 415 not an image, 422 malformed form.

Hardening: a Host allow-list (:mod:`matchlens.service.hosts`, against DNS rebinding), a deadline
for request bodies (:class:`~matchlens.service.uploads.BodyDeadline`; slow heads are the server's
part, :mod:`matchlens.service.server`), and uploads stored and indexed as one step that leaves
nothing in ``uploads/`` when it fails (:meth:`~matchlens.service.live.LiveIndex.add_uploads`).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterable

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from matchlens.version import __version__
from matchlens.errors import (BoxError, ConfigError, ImageLoadError, IndexError_, MatchlensError, SourceError)
from matchlens.io.images import load_image, parse_box
from matchlens.service import media
from matchlens.local.features import CACHE_KIND, FeatureCache, feature_key
from matchlens.evidence.explainers import Explainer, make_explainer
from matchlens.evidence.local import MAX_KEYPOINTS, MAX_SIDE
from matchlens.service.hosts import HostAllowList, default_allowed_hosts, normalise
from matchlens.service.live import LiveIndex, NotFound, Snapshot
from matchlens.service.localize import MapInfo, MapService, install_localize_routes
from matchlens.service.relation import RelationInfo, RelationService, install_relation_routes
from matchlens.service.text import install_text_routes, load_text_model
from matchlens.service.identify import identified, load_identifier
from matchlens.service.query import evidence_query, regional_search, timed_search
from matchlens.regional import regional_kind_names
from matchlens.regional.search import RegionalPlan
from matchlens.service.uploads import (DEFAULT_MAX_PIXELS, DEFAULT_REQUEST_TIMEOUT, BodyDeadline, BodyLimit,
                                       DEFAULT_MAX_UPLOAD_BYTES, probe_image, read_limited, safe_name)
from matchlens.rerank import RERANKERS

STATIC = Path(__file__).parent / "static"
MAX_K = 1000
# The page may load only what this server serves (a CDN reference would be refused, and seen).
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
_STATUS = {BoxError: 400, ConfigError: 400, SourceError: 400, ImageLoadError: 400, IndexError_: 409}


def _query_quality(index, data: bytes, box) -> dict | None:
    """The query's predicted quality and warning when the index has a quality model (else None)."""
    from matchlens.quality.location import quality_applies

    if not quality_applies(index):  # no model: the search path stays free of PyTorch
        return None
    from matchlens.quality.query import service_quality

    return service_quality(index, data, box)


class WriteForbidden(MatchlensError):
    """A write endpoint called without a valid token (401 no token, 403 wrong token or writes disabled)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.http_status = status


@dataclass(frozen=True)
class Settings:
    """Server options (``matchlens serve`` flags)."""

    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_parallel: int = 4  # queries decoded and searched at once; more wait (bounds memory: 4 x max_pixels x 3 bytes)
    allowed_hosts: tuple[str, ...] = ()  # Host header values answered (normalised; "*": any)
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT  # seconds for a request body (None: no limit)


# --- response models (they make /docs and /openapi.json precise) ---------------------------------
class Result(BaseModel):
    rank: int
    score: float
    id: int = Field(description="Stable image id (metadata id), for /images, /thumbnails, /explain.")
    name: str
    path: str
    image_url: str
    thumbnail_url: str
    regions: dict[str, float] | None = Field(default=None, description="With regional=true: cosine of each region with the query's.")
    verdict: str | None = Field(default=None, description="With regional=true: e.g. 'left sleeve differs, the rest matches'.")
    region_boxes: list[list[float]] | None = Field(
        default=None, description="With regional=true: the result's region boxes, relative (x0, y0, x1, y1) in [0, 1].")


class RegionalInfo(BaseModel):
    kind: str
    layout: str
    regions: list[str]
    labels: list[str]
    weights: list[float] = Field(description="λ of each region (sum 1).")
    differs_below: float = Field(description="A region whose cosine is below this differs.")
    query_boxes: list[list[float]] = Field(description="The query's region boxes, relative to the query box (or image).")


class SearchResponse(BaseModel):
    results: list[Result]
    timings_ms: dict[str, float] = Field(description="decode, extract, search, rerank and total, in ms.")
    box: list[float] | None = Field(description="The query box as used, pixels of the upright query.")
    query_size: list[int] = Field(description="Decoded query (width, height); large JPEGs decode at 1/2..1/8.")
    k: int
    rerank: str | None
    generation: str
    index_size: int
    regional: RegionalInfo | None = Field(default=None, description="The regional ranking, with regional=true.")
    modify: str | None = Field(default=None, description="The modification text the query was composed with (modify=...).")
    quality: dict | None = Field(default=None, description="With a quality model in the index (matchlens train-quality): "
                                 "predicted_ap, low, threshold, issues, estimates and a warning when the query's quality is low.")
    identified: dict | None = Field(default=None, description="With serve --identify: the predicted class (label, "
                                    "confidence, uncertain, source recognizer|knn, top).")


class EvidenceInfo(BaseModel):
    kind: str = Field(description="indicative (the trained verifier given with --verifier) or spatial (RootSIFT + MAGSAC++).")
    method: str
    verifier: str | None = Field(description="The verifier checkpoint, when kind is indicative.")


class IndexInfo(BaseModel):
    generation: str
    images: int
    skipped: int
    dim: int
    pipeline: str
    spec: dict[str, Any]
    whitening: str | None
    dba: dict[str, Any] | None
    rerankers: list[str]
    evidence: EvidenceInfo = Field(description="What POST /explain draws.")
    writable: bool
    limits: dict[str, int]
    map: MapInfo | None = Field(default=None, description="The map POST /localize uses (None: started without --map).")
    version: str
    regional_kinds: list[str] = Field(default=[], description="Regional kinds stored with the index (POST /search regional=true).")
    composer: str | None = Field(default=None, description="The composer loaded with --composer (POST /search modify=TEXT); None: none.")
    relations: RelationInfo | None = Field(default=None, description="The relation model (POST /search/relation); None: none.")
    text_model: bool = Field(default=False, description="True when started with --text-model: POST /search/text ranks by a sentence.")
    identify: dict | None = Field(default=None, description="With serve --identify: the recognizer or kNN vote that names each query's class.")


class Health(BaseModel):
    status: str
    images: int
    generation: str


class Added(BaseModel):
    id: int
    name: str
    path: str


class AddResponse(BaseModel):
    added: list[Added]
    skipped: list[str]
    index_size: int
    generation: str


class RemoveResponse(BaseModel):
    removed: int
    index_size: int
    generation: str


# --- the app -----------------------------------------------------------------------------------
def create_app(index_dir: str | Path, token: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, verifier: str | Path | None = None, *, host: str = "127.0.0.1",
               allowed_hosts: Iterable[str] = (), request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
               map_dir: str | Path | None = None, composer: str | Path | None = None,
               relation_model: str | Path | None = None,
               text_model: str | Path | None = None, identify: str | None = None) -> FastAPI:
    """The FastAPI app serving the index at ``index_dir`` (opened and warmed now: one-line
    IndexError_ if it is missing). Without ``token`` the write endpoints are disabled.
    ``verifier`` (a ``matchlens train-verifier`` checkpoint, loaded now: one-line WeightsError if
    it is not one) makes ``POST /explain`` draw the verifier's evidence instead of the inliers of
    spatial verification.

    Only requests whose Host header names ``host`` (the address the app will listen on; with a
    loopback address also ``localhost``, ``127.0.0.1``, ``[::1]``) or one of ``allowed_hosts``
    (``NAME``, ``NAME:PORT``, ``*.DOMAIN``; ``*`` turns the check off) are answered; others get
    400. A test client must allow its own host: Starlette's TestClient sends ``testserver``.
    A request body must arrive within ``request_timeout`` seconds (408; None: no limit).
    ``map_dir`` (a ``matchlens map`` folder built with this index, opened now: one-line MapError
    if it is damaged or was built for another index) enables ``POST /localize``. ``composer`` (a
    ``matchlens train-composer`` model for this index, loaded now: one-line error otherwise)
    enables ``modify`` on ``POST /search``: the query image composed with a text (TIRG).
    ``relation_model`` (a ``matchlens train-relations`` model; default: the one stored with the
    index, if any) enables ``POST /search/relation`` (:mod:`matchlens.service.relation`)."""
    allowed = tuple(dict.fromkeys([*default_allowed_hosts(host), *(normalise(h) for h in allowed_hosts)]))
    explainer = make_explainer(verifier)  # first: a bad checkpoint fails before the index is warmed
    live = LiveIndex(index_dir)
    scene_map = MapService(map_dir, live) if map_dir is not None else None
    settings = Settings(token or None, max_upload_bytes, max_pixels, allowed_hosts=allowed,
                        request_timeout=request_timeout)
    # One gate for every route that decodes a query: it bounds the memory of all of them together.
    gate = threading.BoundedSemaphore(settings.max_parallel)
    app = _new_app(max_upload_bytes, request_timeout)
    app.state.live, app.state.settings = live, settings
    app.state.composer = _load_composer(composer, live)
    app.state.relations = RelationService.open(live, relation_model)  # a bad model fails now, in one line
    app.state.text_model = load_text_model(text_model, live)  # another pipeline's model fails now, in one line
    app.state.identifier = load_identifier(identify, live)  # a recognizer for another backbone fails now, in one line
    _install_errors(app)
    _install_page(app)
    _install_read_routes(app, live, settings, explainer, gate, scene_map)
    install_localize_routes(app, live, scene_map, gate, settings.max_upload_bytes, settings.max_pixels)
    install_relation_routes(app, live, app.state.relations)
    install_text_routes(app, live, app.state.text_model)
    _install_write_routes(app, live, settings)
    app.add_middleware(HostAllowList, allowed=allowed)  # last added, outermost: before anything else runs
    return app


def _new_app(max_upload_bytes: int, request_timeout: float | None) -> FastAPI:
    from fastapi_offline import FastAPIOffline  # Swagger UI and ReDoc assets shipped in a wheel: no CDN

    app = FastAPIOffline(title="matchlens", version=__version__,
                         description="Instance-level image retrieval with evidence. Write endpoints need "
                                     "`Authorization: Bearer <token>`.")
    # The body limit covers a whole multipart request: one image at the limit plus its form fields.
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes + 64 * 1024)
    app.add_middleware(BodyDeadline, seconds=request_timeout)
    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(MatchlensError)
    async def matchlens_error(request: Request, exc: MatchlensError) -> JSONResponse:
        status = getattr(exc, "http_status", None) or next(
            (code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_middleware(NoSniffing)


class NoSniffing:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every response, so browsers never
    guess a type either (an uploaded file is only ever served with the type sniffed here)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def send_with_header(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_header if scope["type"] == "http" else send)


def _install_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})


def _result(entry_id: int, rank: int, score: float, path: str) -> Result:
    return Result(rank=rank, score=score, id=entry_id, name=Path(path).name, path=path,
                  image_url=f"/images/{entry_id}", thumbnail_url=f"/thumbnails/{entry_id}")


def _query_upload(upload: UploadFile, settings: Settings) -> tuple[bytes, Any]:
    data = read_limited(upload, settings.max_upload_bytes)
    return data, probe_image(data, settings.max_pixels, upload.filename or "upload")


def _install_read_routes(app: FastAPI, live: LiveIndex, settings: Settings, explainer: Explainer,
                         gate: threading.BoundedSemaphore, scene_map: MapService | None) -> None:
    @app.get("/health", response_model=Health, tags=["index"])
    def health() -> Health:
        """Liveness: the server answers and has an index."""
        index = live.snapshot().index
        return Health(status="ok", images=index.size, generation=index.generation)

    @app.get("/index", response_model=IndexInfo, tags=["index"])
    def index_info() -> IndexInfo:
        """The index's pipeline spec, counts and what this server allows."""
        index = live.snapshot().index
        return IndexInfo(
            generation=index.generation, images=index.size, skipped=len(index.skipped()), dim=index.dim,
            pipeline=index.spec.describe(), spec=index.spec.to_dict(), whitening=index.manifest.get("whitening_state"),
            dba=index.manifest.get("dba"), rerankers=RERANKERS.names(), evidence=_evidence_info(explainer),
            writable=settings.token is not None,
            limits={"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels, "max_k": MAX_K},
            version=__version__, map=scene_map.info() if scene_map is not None else None,
            regional_kinds=regional_kind_names(index),
            composer=app.state.composer.name if app.state.composer is not None else None,
            relations=app.state.relations.info() if app.state.relations is not None else None,
            text_model=app.state.text_model is not None,
            identify=app.state.identifier.describe() if app.state.identifier is not None else None)

    @app.post("/search", response_model=SearchResponse, tags=["search"])
    def search(
        image: Annotated[UploadFile, File(description="Query image (any format Pillow reads; sniffed, not trusted).")],
        box: Annotated[str | None, Form(description="x0,y0,x1,y1 in pixels of the upright query image.")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K, description="Number of results.")] = 20,
        rerank: Annotated[str | None, Form(description="Re-ranking chain, e.g. sv:k=50,aqe:k=2.")] = None,
        regional: Annotated[bool, Form(description="Rank by the regional kind (Σ_r cos / R over its regions) and "
                                                   "give each result's region similarities.")] = False,
        modify: Annotated[str | None, Form(description="A modification text, e.g. 'make it red': the query is the "
                                                       "image composed with it (needs serve --composer).")] = None,
    ) -> SearchResponse:
        """Rank the indexed images against an uploaded query, optionally inside a box."""
        snap = live.snapshot()
        parsed = parse_box(box) if box and box.strip() else None
        data, probe = _query_upload(image, settings)
        chain = rerank.strip() if rerank else None
        modified = _modified(app.state.composer, snap, modify, regional)  # a bad text fails before decoding
        with gate:
            if regional:
                found, plan, matches = regional_search(snap.index, data, probe, parsed, k, chain)
            else:
                found, plan, matches = timed_search(snap.index, data, probe, parsed, k, chain, modified), None, []
        assert found.query_size is not None  # the uploaded query is decoded by the search
        results = [_result(h.id, h.rank, h.score, h.path) for h in found.results]
        for result, match in zip(results, matches):
            result.regions, result.verdict = match.similarities, match.verdict
            result.region_boxes = [list(b) for b in match.boxes]
        return SearchResponse(
            results=results, timings_ms=found.timings_ms,
            box=list(parsed) if parsed else None, query_size=list(found.query_size), k=k, rerank=found.rerank,
            generation=snap.index.generation, index_size=snap.index.size,
            regional=_regional_info(plan) if plan is not None else None, modify=modify if modified else None,
            quality=_query_quality(snap.index, data, parsed),
            identified=identified(app.state.identifier, data, parsed, found.results))

    @app.post("/explain", tags=["search"], response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "Side-by-side evidence overlay."}})
    def explain(
        image: Annotated[UploadFile, File(description="The query image of the search.")],
        id: Annotated[int, Form(description="Id of a result.")],
        box: Annotated[str | None, Form(description="The query box of the search, if any.")] = None,
    ) -> Response:
        """Evidence (PNG): query and result side by side with the matched regions drawn.
        ``X-Matchlens-Evidence`` says how (``spatial``: inlier matches, ``indicative``: the
        verifier's heatmaps), ``X-Matchlens-Score`` gives the inlier count or the verifier's
        probability; spatial evidence adds ``X-Matchlens-Inliers`` and ``X-Matchlens-Tentative``."""
        snap = live.snapshot()
        entry = snap.entry(id)
        parsed = parse_box(box) if box and box.strip() else None
        data, probe = _query_upload(image, settings)
        with gate:
            query, scaled_box = evidence_query(data, probe, parsed, MAX_SIDE, settings.max_pixels)
            target = _load_target(entry, settings)
            features = _cached_features(snap, entry) if explainer.uses_local_features else None
            view = explainer.explain(query, target, scaled_box, features, title=f"query | #{entry.id} {Path(entry.path).name}")
        return Response(view.png, media_type="image/png", headers=_evidence_headers(explainer, view))

    @app.get("/images/{image_id}", tags=["images"], response_class=Response,
             responses={200: {"content": {"image/*": {}}}, 404: {"description": "No indexed image has this id."}})
    def get_image(image_id: int) -> Response:
        """The indexed image (its file, or a JPEG when browsers cannot show its format)."""
        entry = live.snapshot().entry(image_id)
        headers = {"ETag": f'"{entry.sha256}"', "Cache-Control": "private, max-age=60"}
        kind = media.browser_type(entry)
        if kind is not None:
            return FileResponse(entry.path, media_type=kind, headers=headers)
        return Response(media.reencoded(entry, max_pixels=settings.max_pixels), media_type="image/jpeg", headers=headers)

    @app.get("/thumbnails/{image_id}", tags=["images"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "No indexed image has this id."}})
    def get_thumbnail(image_id: int) -> Response:
        """A JPEG thumbnail (longest side 256 px) of an indexed image."""
        entry = live.snapshot().entry(image_id)
        return Response(media.thumbnail(entry, settings.max_pixels), media_type="image/jpeg",
                        headers={"ETag": f'"{entry.sha256}"', "Cache-Control": "private, max-age=60"})


def _load_composer(path: str | Path | None, live: LiveIndex) -> Any:
    """The composer model for ``modify`` (None without one); refused now if it is for another index."""
    if path is None:
        return None
    from matchlens.queries.modify import load_composer  # deferred: imports torch

    model = load_composer(path)
    model.space.check(live.snapshot().index, path)
    return model


def _modified(model: Any, snap: Snapshot, modify: str | None, regional: bool) -> Any:
    """The search pipeline composing the query with ``modify`` (None when no text was given)."""
    if modify is None:
        return None
    if model is None:
        raise ConfigError("this server has no composer: start it with 'matchlens serve IDX --composer MODEL' to use modify")
    if regional:
        raise ConfigError("modify ranks by the global descriptor: not with regional=true")
    from matchlens.queries.modify import modified_pipeline  # deferred: imports torch

    return modified_pipeline(snap.index, model, modify)


def _regional_info(plan: RegionalPlan) -> RegionalInfo:
    kind = plan.kind
    return RegionalInfo(kind=kind.name, layout=kind.layout, regions=kind.names, labels=kind.labels,
                        weights=plan.weights.tolist(), differs_below=plan.differs_below,
                        query_boxes=[list(b) for b in kind.encoding.layout.boxes()])


def _evidence_info(explainer: Explainer) -> EvidenceInfo:
    return EvidenceInfo(kind=explainer.kind, method=explainer.description, verifier=explainer.source)


def _evidence_headers(explainer: Explainer, view) -> dict[str, str]:
    headers = {"X-Matchlens-Evidence": explainer.kind, "X-Matchlens-Score": f"{view.score:.4f}",
               "Cache-Control": "no-store"}
    if view.inliers is not None:
        headers.update({"X-Matchlens-Inliers": str(view.inliers), "X-Matchlens-Tentative": str(view.tentative)})
    return headers


def _load_target(entry, settings: Settings):
    try:
        return load_image(entry.path, max_side=MAX_SIDE, max_pixels=settings.max_pixels)
    except ImageLoadError as exc:
        raise NotFound(f"image {entry.id} cannot be read: {exc}") from None


def _cached_features(snap: Snapshot, entry):
    """The result's RootSIFT from the sv reranker's cache, when a search with sv stored them."""
    folder = snap.index.root / "cache" / CACHE_KIND
    if not folder.is_dir():
        return None
    return FeatureCache(folder).get(entry.sha256, feature_key(MAX_KEYPOINTS, MAX_SIDE))


bearer = HTTPBearer(auto_error=False, description="The server's API token (--token or MATCHLENS_TOKEN).")


def _install_write_routes(app: FastAPI, live: LiveIndex, settings: Settings) -> None:
    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if settings.token is None:
            raise WriteForbidden("write endpoints are disabled: start the server with --token or MATCHLENS_TOKEN", 403)
        if credentials is None:
            raise WriteForbidden("this endpoint needs the API token: send 'Authorization: Bearer <token>'", 401)
        if not secrets.compare_digest(credentials.credentials.encode(), settings.token.encode()):
            raise WriteForbidden("wrong API token", 403)

    @app.post("/images", response_model=AddResponse, tags=["images"], dependencies=[Depends(require_token)])
    def add_images(
        files: Annotated[list[UploadFile], File(description="Images to add (stored under the index's uploads/).")],
    ) -> AddResponse:
        """Add images to the index (a new generation; searches go on meanwhile). Needs the token.
        Files the index cannot read are listed in ``skipped`` and not kept; on an error nothing is."""
        checked = [(upload, *_query_upload(upload, settings)) for upload in files]  # all valid before any write
        named = [(safe_name(upload.filename, probe.format, data), data) for upload, data, probe in checked]
        snap, entries = live.add_uploads(named)
        added = [Added(id=e.id, name=Path(e.path).name, path=e.path) for e in entries if e.status == "indexed"]
        skipped = [f"{Path(e.path).name}: {e.error}" for e in entries if e.status != "indexed"]
        return AddResponse(added=added, skipped=skipped, index_size=snap.index.size, generation=snap.index.generation)

    @app.delete("/images/{image_id}", response_model=RemoveResponse, tags=["images"],
                dependencies=[Depends(require_token)])
    def remove_image(image_id: int) -> RemoveResponse:
        """Remove an image from the index (a file stored by POST /images is deleted too). Needs the token."""
        snap, entry = live.remove(image_id)
        return RemoveResponse(removed=entry.id, index_size=snap.index.size, generation=snap.index.generation)
