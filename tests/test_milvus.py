"""The Milvus backend on Milvus Lite (embedded, a local .db path): same API and CLI as FAISS."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import matchlens
from matchlens.errors import ConfigError
from matchlens.index.backends import make_backend
from tests.conftest import require_module, make_scene, run_cli

require_module("milvus_lite")


def client_of(index):
    return index.backend.client(index.root)


def collection_of(index) -> str:
    return index.manifest["backend"]["state"]["collection"]


@pytest.fixture(scope="module")
def extra_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extra-milvus")
    for i in (50, 51):
        make_scene(i).save(folder / f"extra_{i}.jpg", quality=92)
    return sorted(str(p) for p in folder.glob("*.jpg"))


def test_flat_collection_ranks_exactly_like_faiss(tmp_path, scenes_dir, small_spec, built_index) -> None:
    index, report = matchlens.build_index_report(scenes_dir, tmp_path / "i", small_spec,
                                                 backend=make_backend("milvus", "FLAT"))
    assert (tmp_path / "i" / "milvus.db").is_dir()  # the default Lite database lives in the index folder
    assert index.approximate and report.backend.startswith("milvus FLAT")
    queries = np.asarray(built_index.vectors())
    scores, rows = index.search_vectors(queries, 5)  # one batched call for all queries
    exact_scores, exact_rows = built_index.search_vectors(queries, 5)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    assert index.search(scenes_dir / "scene_07.jpg", k=1)[0].path.endswith("scene_07.jpg")


def test_hnsw_build_params_reach_milvus_and_add_remove_are_incremental(tmp_path, scenes_dir, small_spec,
                                                                       extra_paths) -> None:
    uri = str(tmp_path / "vectors.db")
    index, _ = matchlens.build_index_report(scenes_dir, tmp_path / "i", small_spec,
                                            backend=make_backend("milvus", "HNSW:M=8,efConstruction=64", uri=uri))
    client, name = client_of(index), collection_of(index)
    described = client.describe_index(name, "vector")
    assert described["index_type"] == "HNSW" and described["params"] == {"M": 8, "efConstruction": 64}
    added, report = index.add(extra_paths)
    assert collection_of(added) == name and report.backend.endswith("incremental (+2 -0)")
    assert client.get_collection_stats(name)["row_count"] == 12
    assert added.search(extra_paths[0], k=1)[0].path == extra_paths[0]
    removed, report = added.remove([str(scenes_dir / "scene_03.jpg")])
    assert report.backend.endswith("incremental (+0 -1)") and client.get_collection_stats(name)["row_count"] == 11
    assert all(not r.path.endswith("scene_03.jpg") for r in removed.search(scenes_dir / "scene_03.jpg", k=11))
    # another index type: a new collection is written; the old one is dropped once the generation
    # is live and no reader holds a generation that uses it
    paths = [e.path for e in removed.entries]
    for held in (index, added, removed):
        held.store.close()
    other, _ = matchlens.Index.build(paths, tmp_path / "i",
                                     small_spec, backend=make_backend("milvus", "IVF_FLAT:nlist=2", uri=uri))
    assert collection_of(other) != name
    assert [c for c in client.list_collections() if c.startswith(name.rsplit("_g", 1)[0])] == [collection_of(other)]


def test_a_crashed_incremental_write_is_repaired_by_a_full_rebuild(tmp_path, scenes_dir, small_spec,
                                                                  extra_paths) -> None:
    index, _ = matchlens.build_index_report(scenes_dir, tmp_path / "i", small_spec,
                                            backend=make_backend("milvus", "FLAT"))
    (tmp_path / "i" / "milvus-pending").write_text("crashed\n")  # what a killed writer leaves
    added, report = index.add(extra_paths)
    assert report.backend.endswith(": built") and collection_of(added) != collection_of(index)
    assert not (tmp_path / "i" / "milvus-pending").exists()
    assert added.size == 12 and added.search(extra_paths[1], k=1)[0].path == extra_paths[1]


def test_a_second_process_gets_a_one_line_error(tmp_path, scenes_dir, small_spec) -> None:
    matchlens.build_index_report(scenes_dir, tmp_path / "i", small_spec, backend=make_backend("milvus", "FLAT"))
    # this process keeps the Lite database open; a CLI search from another process must say so
    result = subprocess.run([sys.executable, "-m", "matchlens.cli", "search", str(tmp_path / "i"),
                             str(scenes_dir / "scene_01.jpg"), "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "open in another process" in result.stderr
    assert "Traceback" not in result.stderr


def test_milvus_lite_listens_on_loopback_only(tmp_path, scenes_dir, small_spec) -> None:
    import psutil

    matchlens.build_index_report(scenes_dir, tmp_path / "i", small_spec, backend=make_backend("milvus", "FLAT"))
    listening = [c.laddr.ip for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening)


def test_lite_index_types_and_uris_are_checked() -> None:
    with pytest.raises(ConfigError, match="Milvus Lite does not support index type IVF_PQ"):
        make_backend("milvus", "IVF_PQ:nlist=8,m=8", uri="x.db")
    with pytest.raises(ConfigError, match="ending in .db"):
        make_backend("milvus", "FLAT", uri="vectors").client(__import__("pathlib").Path("."))
    with pytest.raises(ConfigError, match="bad Milvus index parameter"):
        make_backend("milvus", "HNSW:M")
    server = make_backend("milvus", "IVF_PQ:nlist=8,m=8", uri="http://127.0.0.1:19530")  # a server takes IVF_PQ
    assert server.refine_factor() == 4


def test_cli_milvus_backend_and_info(tmp_path, scenes_dir, capsys) -> None:
    root = tmp_path / "i"
    code, _, err = run_cli(capsys, "index", scenes_dir, "-i", root, "--max-side", "128", "-q",
                           "--backend", "milvus", "--factory", "IVF_SQ8:nlist=2", "--uri", tmp_path / "m.db",
                           "--backend-params", "nprobe=2")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "info", root, "--json")
    backend = json.loads(out)["backend"]
    assert backend.startswith(f"milvus IVF_SQ8:nlist=2 at {tmp_path / 'm.db'} (refine=4): trained")
    code, out, _ = run_cli(capsys, "search", root, scenes_dir / "scene_02.jpg", "-k", "2", "--json")
    assert code == 0 and json.loads(out)[0]["path"].endswith("scene_02.jpg")
