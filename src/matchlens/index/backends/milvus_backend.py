"""Milvus backend (pymilvus ``MilvusClient``): Milvus Lite for a local ``.db`` path, a Milvus server
or cluster for ``http://host:19530``.

Vectors are stored in a collection under their image ids (INT64 primary key), with the inner
product metric. The index description is ``TYPE[:param=value,...]``, e.g. ``FLAT``,
``IVF_FLAT:nlist=1024``, ``IVF_SQ8:nlist=1024``, ``HNSW:M=16,efConstruction=200`` (Milvus Lite
supports exactly these four; a server also takes ``IVF_PQ`` and its other types). Build
parameters are passed nested (``params={"params": {...}}``): Milvus Lite silently ignores them
otherwise.

Generations: a full build writes a new collection (``BASE_gNNNN``) and, once the generation is
published, drops the older ones, so a crash mid-build leaves the live index untouched. An add or
remove changes the live collection in place (insert the new vectors, delete the removed ids)
behind a marker file; readers ignore ids their generation does not list, and a write that finds
the marker of a crashed write rebuilds into a new collection.

Milvus Lite runs in-process (a gRPC server on 127.0.0.1, random port) and only one process at a
time may open a database: a second gets a one-line error saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from matchlens.components import optional, positive_int
from matchlens.errors import ConfigError, IndexError_, MatchlensError
from matchlens.index.backends.base import BACKENDS, Candidates, VectorBackend, WriteJob, in_batches
from matchlens.config import parse_value

LITE_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")
DEFAULT_LITE_DB = "milvus.db"
PENDING = "milvus-pending"
INSERT_BATCH = 5000
ID, VECTOR = "id", "vector"
_CLIENTS: dict[str, Any] = {}  # one client per URI and process (Milvus Lite allows one opener)


@BACKENDS.register("milvus")
class MilvusBackend(VectorBackend):
    """Vectors in a Milvus collection (see the module docstring).

    Parameters: ``collection`` (base name; default derived from the index folder), ``nprobe``
    (IVF), ``ef`` (HNSW), ``refine`` (exact re-ranking factor, default 1; 4 for IVF_SQ8),
    ``batch`` (queries per search call: one call costs ~45 ms on Milvus Lite whatever its size).
    """

    default_factory = "FLAT"
    defaults = {"collection": None, "nprobe": 32, "ef": 128, "refine": None, "batch": 512}
    build_params = ("collection",)

    def validate(self) -> None:
        """Known index type (Lite: FLAT, IVF_FLAT, IVF_SQ8, HNSW); integer search parameters."""
        self.index_type, self.index_params = parse_index(self.factory)
        if self.uri and is_local(self.uri) and self.index_type not in LITE_TYPES:
            raise ConfigError(f"Milvus Lite does not support index type {self.index_type}; "
                              f"choose one of {', '.join(LITE_TYPES)} (or use a Milvus server URI)")
        for key in ("nprobe", "ef", "batch"):
            self.check(key, positive_int)
        self.check("refine", optional, positive_int)
        name = self.params["collection"]
        if name is not None and (not isinstance(name, str) or not name.replace("_", "").isalnum() or name[0].isdigit()):
            raise ConfigError(f"milvus backend: collection must be letters, digits and _ (not first), got {name!r}")

    def refine_factor(self) -> int:
        if self.params["refine"] is not None:
            return int(self.params["refine"])
        return 4 if self.index_type in ("IVF_SQ8", "IVF_PQ") else 1

    def describe(self) -> str:
        return f"milvus {self.factory} at {self.uri or DEFAULT_LITE_DB} (refine={self.refine_factor()})"

    # --- connection --------------------------------------------------------------------------
    def resolved_uri(self, root: Path) -> str:
        """The URI to connect to: a local path is taken relative to the index folder."""
        uri = self.uri or DEFAULT_LITE_DB
        if is_local(uri):
            return str((root / uri).resolve()) if not os.path.isabs(uri) else uri
        return uri

    def client(self, root: Path):
        """This process's client for the backend's URI (Milvus Lite: checks no other process has it)."""
        uri = self.resolved_uri(root)
        if uri not in _CLIENTS:
            _CLIENTS[uri] = connect(uri)
        return _CLIENTS[uri]

    def base_name(self, root: Path) -> str:
        """Collection base name: the ``collection`` parameter or one derived from the index path."""
        if self.params["collection"]:
            return self.params["collection"]
        return "matchlens_" + hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]

    # --- writer ------------------------------------------------------------------------------
    def write(self, job: WriteJob) -> dict[str, Any]:
        """Insert into a new collection, or apply ``job.delta`` to the live one."""
        client = self.client(job.root)
        marker = job.root / PENDING
        previous = (job.previous_state or {}).get("collection")
        crashed = marker.exists()
        marker.write_text(f"{previous or ''}\n", encoding="utf-8")
        if job.delta is not None and previous and not crashed and client.has_collection(previous):
            return self._apply_delta(client, previous, job)
        name = f"{self.base_name(job.root)}_g{time.time_ns() // 1000:x}"
        self._create(client, name, job.vectors.shape[1])
        self._insert(client, name, job.vectors, job.ids, np.arange(len(job.ids)), job)
        client.flush(name)
        return {"state": "trained", "collection": name, "mode": "built", "count": int(len(job.ids)),
                "dim": int(job.vectors.shape[1])}

    def _apply_delta(self, client, name: str, job: WriteJob) -> dict[str, Any]:
        assert job.delta is not None  # write() applies a delta only when there is one
        remove = [int(i) for i in job.delta.remove_ids]
        for part in in_batches(len(remove), INSERT_BATCH):
            client.delete(name, ids=remove[part])
        self._insert(client, name, job.vectors, job.ids, job.delta.add_rows, job)
        client.flush(name)
        return {"state": "trained", "collection": name, "mode": "incremental", "count": int(len(job.ids)),
                "added": int(len(job.delta.add_rows)), "removed": len(remove), "dim": int(job.vectors.shape[1])}

    def _create(self, client, name: str, dim: int) -> None:
        from pymilvus import DataType

        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=int(dim))
        index_params = client.prepare_index_params()
        # Nested: Milvus Lite drops build parameters given at the top level.
        index_params.add_index(field_name=VECTOR, index_type=self.index_type, metric_type="IP",
                               params={"params": dict(self.index_params)})
        client.create_collection(name, schema=schema, index_params=index_params)

    @staticmethod
    def _insert(client, name: str, vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray, job: WriteJob) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        advance = job.progress(len(rows), "inserting into Milvus") if job.progress and len(rows) else None
        for part in in_batches(len(rows), INSERT_BATCH):
            chunk = rows[part]
            block = np.asarray(vectors[chunk], dtype=np.float32)
            client.insert(name, [{ID: int(i), VECTOR: v} for i, v in zip(ids[chunk], block)])
            if advance:
                advance(len(chunk))

    def after_commit(self, root: Path, state: dict[str, Any]) -> None:
        """Drop this index's other collections (deleted generations, crashed builds); clear the
        marker. Collections of generations still on disk (a reader holds them) are kept."""
        client = self.client(root)
        keep = {state.get("collection")} | _collections_on_disk(root)
        base = self.base_name(root) + "_g"
        for name in client.list_collections():
            if name.startswith(base) and name not in keep:
                client.drop_collection(name)
        (root / PENDING).unlink(missing_ok=True)

    # --- searcher ----------------------------------------------------------------------------
    def open(self, root: Path, gen_dir: Path, state: dict[str, Any]) -> Candidates:
        """Load the generation's collection; search in batches of ``batch`` queries per call."""
        client = self.client(root)
        name = state.get("collection")
        if not name or not client.has_collection(name):
            raise IndexError_(f"index '{root}': its Milvus collection {name!r} is missing from {self.resolved_uri(root)}; "
                              "rebuild the index")
        client.load_collection(name)

        def candidates(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            n = len(queries)
            scores = np.full((n, k), -np.inf, dtype=np.float32)
            ids = np.full((n, k), -1, dtype=np.int64)
            search_params = {"metric_type": "IP", "params": {"nprobe": self.params["nprobe"], "ef": max(self.params["ef"], k)}}
            for part in in_batches(n, self.params["batch"]):
                hits = client.search(name, data=np.asarray(queries[part], dtype=np.float32).tolist(), limit=k,
                                     anns_field=VECTOR, output_fields=[ID], search_params=search_params)
                for i, row in enumerate(hits, start=part.start):
                    found = [(h["id"], h["distance"]) for h in row][:k]
                    if found:
                        ids[i, :len(found)] = [f[0] for f in found]
                        scores[i, :len(found)] = [f[1] for f in found]
            return scores, ids

        return candidates


def parse_index(text: str) -> tuple[str, dict[str, Any]]:
    """``"HNSW:M=16,efConstruction=200"`` → ``("HNSW", {"M": 16, "efConstruction": 200})``."""
    kind, _, rest = text.partition(":")
    kind = kind.strip().upper()
    if not kind.replace("_", "").isalnum():
        raise ConfigError(f"bad Milvus index {text!r}; write TYPE or TYPE:param=value,... e.g. HNSW:M=16")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"bad Milvus index parameter {item!r} in {text!r}; write param=value")
        params[key.strip()] = parse_value(value.strip())
    return kind, params


def is_local(uri: str) -> bool:
    """True for a Milvus Lite database path (anything that is not a ``scheme://`` URI)."""
    return "://" not in uri


def connect(uri: str):
    """A ``MilvusClient`` for ``uri``; Milvus Lite paths must end in ``.db`` and be free."""
    from pymilvus import MilvusClient

    if is_local(uri):
        if not uri.endswith(".db"):
            raise ConfigError(f"a Milvus Lite URI is a local path ending in .db, got {uri!r}")
        _check_lite_free(uri)
    try:
        return MilvusClient(uri=uri)
    except Exception as exc:  # pymilvus raises its own exception types for every connection failure
        reason = " ".join(str(exc).split())[:200]
        raise IndexError_(f"cannot connect to Milvus at {uri}: {reason}") from None


def _check_lite_free(path: str) -> None:
    """One-line error when another process holds the Milvus Lite database (its LOCK file)."""
    import fcntl

    from milvus_lite.server_manager import server_manager_instance

    if os.path.abspath(path) in server_manager_instance._servers:
        return  # opened by this process already: pymilvus reuses it
    lock = Path(path) / "LOCK"
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise MatchlensError(
            f"the Milvus Lite database {path} is open in another process (Milvus Lite allows one process at a "
            "time); stop that process, or use a Milvus server (--uri http://host:19530) for concurrent access"
        ) from None
    finally:
        os.close(fd)


def _collections_on_disk(root: Path) -> set[str]:
    """The Milvus collections named by the manifests of the generations present in ``root``."""
    names = set()
    for manifest in root.glob("gen-*/manifest.json"):
        try:
            state = (json.loads(manifest.read_text(encoding="utf-8")).get("backend") or {}).get("state") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(state, dict) and state.get("collection"):
            names.add(str(state["collection"]))
    return names
