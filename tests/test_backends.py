"""Vector backends: FAISS factory strings (Flat, IVF-PQ + exact re-ranking, HNSW), incremental
writes through the index's generations, and re-rankers on top of an approximate backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

import matchlens
from matchlens.errors import ConfigError, IndexError_
from matchlens.index.backends import Searcher, WriteJob, backend_from_dict, make_backend, refine_exact
from matchlens.index.backends.faiss_backend import INDEX_FILE
from tests.conftest import make_scene, run_cli


def clustered(n: int, d: int = 64, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """L2-normalised points around random centres (a crude stand-in for descriptors)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ base.T), axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def searcher(backend, vectors, tmp_path, ids=None):
    ids = np.arange(len(vectors)) if ids is None else ids
    state = backend.write(WriteJob(root=tmp_path, tmp=tmp_path, vectors=vectors, ids=ids))
    id_to_row = np.full(ids.max() + 1, -1)
    id_to_row[ids] = np.arange(len(ids))
    return Searcher(backend, backend.open(tmp_path, tmp_path, state), id_to_row, vectors), state


@pytest.fixture(scope="module")
def data():
    base = clustered(3000)
    return base, clustered(50, seed=1)


# --- the backends on arrays ------------------------------------------------------------------

def test_ivfpq_shortlist_reranked_exactly_reaches_exact_recall(data, tmp_path) -> None:
    base, queries = data
    truth = exact_top(queries, base, 10)
    backend = make_backend("faiss", "IVF16,PQ16", nprobe=16)
    search, state = searcher(backend, base, tmp_path)
    assert state["state"] == "trained" and state["code_bytes"] == 16 and (tmp_path / INDEX_FILE).is_file()
    scores, rows = search.search(queries, 10)
    assert recall(rows, truth) >= 0.95
    # re-ranked scores are the exact inner products, best first
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", base[rows], queries), rtol=0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-7).all()
    backend.configure(refine=1)  # the PQ order alone: far worse on 16-byte codes
    assert recall(search.search(queries, 10)[1], truth) < recall(rows, truth) - 0.2


def test_hnsw_finds_exact_neighbours_with_exact_scores(data, tmp_path) -> None:
    base, queries = data
    backend = make_backend("faiss", "HNSW16", efSearch=256)
    search, state = searcher(backend, base, tmp_path)
    assert state["trained_on"] == 0  # nothing to train
    scores, rows = search.search(queries, 10)
    truth = exact_top(queries, base, 10)
    assert recall(rows, truth) >= 0.97
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", base[rows], queries), atol=1e-5)
    backend.configure(efSearch=16)  # a narrow beam misses neighbours: the parameter reaches FAISS
    assert recall(search.search(queries, 10)[1], truth) < 0.8


def test_stable_ids_map_back_to_rows(data, tmp_path) -> None:
    base, queries = data
    ids = np.arange(len(base)) * 7 + 3  # image ids are not rows
    search, _ = searcher(make_backend("faiss", "HNSW16"), base, tmp_path, ids)
    _, rows = search.search(queries[:5], 3)
    np.testing.assert_array_equal(rows[:, 0], exact_top(queries[:5], base, 1)[:, 0])


def test_training_uses_a_sample_of_the_given_size(data, tmp_path) -> None:
    base, _ = data
    _, state = searcher(make_backend("faiss", "IVF8,PQ8", train_size=500), base, tmp_path)
    assert state["trained_on"] == 500 and state["ntotal"] == len(base)


def test_too_few_vectors_to_train_stays_pending(tmp_path) -> None:
    backend = make_backend("faiss", "IVF64,PQ8")
    state = backend.write(WriteJob(root=tmp_path, tmp=tmp_path, vectors=clustered(30), ids=np.arange(30)))
    assert state["state"].startswith("pending: needs 256 vectors") and not (tmp_path / INDEX_FILE).exists()


def test_refine_exact_orders_candidates_and_keeps_missing_last() -> None:
    vectors = np.eye(4, dtype=np.float32)
    query = np.array([[0.1, 0.9, 0.3, 0.0]], dtype=np.float32)
    scores, rows = refine_exact(query, np.array([[0, -1, 2, 1]]), vectors, 4)
    assert rows.tolist() == [[1, 2, 0, -1]] and scores[0, 3] == -np.inf
    np.testing.assert_allclose(scores[0, :3], [0.9, 0.3, 0.1], atol=1e-6)


def test_refine_exact_numpy_fallback_equals_faiss(data, monkeypatch) -> None:
    from matchlens.index.backends import base as base_module

    vectors, queries = data
    rows = np.random.default_rng(0).integers(0, len(vectors), size=(len(queries), 40))
    rows[3, 7] = -1
    fast = refine_exact(queries, rows, vectors, 10)  # FAISS, in place
    monkeypatch.setattr(base_module, "REFINE_ROWS", 100)  # NumPy, 2 queries per chunk
    slow = refine_exact(queries, rows, np.asfortranarray(vectors), 10)
    np.testing.assert_array_equal(fast[1], slow[1])
    np.testing.assert_allclose(fast[0], slow[0], atol=1e-6)


@pytest.mark.parametrize("factory, message", [("IVF4,PQ7", "multiple of the number of subquantizers"),
                                              ("Nonsense9", "could not parse")])
def test_bad_factory_is_one_line_config_error(factory, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        make_backend("faiss", factory).check_dim(64)
    assert "\n" not in str(info.value)


def test_bad_backend_options() -> None:
    with pytest.raises(ConfigError, match="unknown vector backend 'annoy'"):
        make_backend("annoy")
    with pytest.raises(ConfigError, match="nprobe must be an integer"):
        make_backend("faiss", "IVF4,Flat", nprobe=0)
    with pytest.raises(ConfigError, match="no parameter ef"):
        make_backend("faiss", "HNSW8", ef=3)
    with pytest.raises(ConfigError, match="--uri is for --backend milvus"):
        make_backend("faiss", "HNSW8", uri="x.db")
    assert make_backend(uri="x.db").name == "milvus" and make_backend().exact


def test_manifest_round_trip_and_search_params_do_not_force_a_rebuild() -> None:
    backend = make_backend("faiss", "IVF4,PQ8", nprobe=4, train_size=1000)
    again = backend_from_dict(json.loads(json.dumps(backend.to_dict())))
    assert again.to_dict() == backend.to_dict()
    again.configure(nprobe=64, refine=2)
    assert again.build_key() == backend.build_key()
    assert make_backend("faiss", "IVF4,PQ8", train_size=50).build_key() != backend.build_key()


# --- through the index -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene_paths(tmp_path_factory, scenes_dir):
    """The 10 shared scenes plus 2 more, as sorted path strings."""
    extra = tmp_path_factory.mktemp("extra")
    for i in (40, 41):
        make_scene(i).save(extra / f"extra_{i}.jpg", quality=92)
    return sorted(str(p) for p in scenes_dir.glob("*.jpg")), sorted(str(p) for p in extra.glob("*.jpg"))


def ann_index(index):
    import faiss

    return faiss.read_index(str(index.store.path / INDEX_FILE))


def centroids(index) -> np.ndarray:
    import faiss

    whole = ann_index(index)  # keep the owner alive while its quantizer is read
    ivf = faiss.extract_index_ivf(whole)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_default_stays_exact_flat_and_writes_no_ann_file(built_index) -> None:
    entry = built_index.manifest["backend"]
    assert entry["name"] == "faiss" and entry["factory"] == "Flat" and entry["state"] == {"state": "exact"}
    assert not (built_index.store.path / INDEX_FILE).exists() and not built_index.approximate
    vectors = np.asarray(built_index.vectors())
    scores, rows = built_index.search_vectors(vectors, 3)
    np.testing.assert_array_equal(rows, exact_top(vectors, vectors, 3))


def test_add_extends_the_trained_ivf_without_retraining(tmp_path, scene_paths, small_spec) -> None:
    scenes, extra = scene_paths
    index, report = matchlens.Index.build(scenes, tmp_path / "i", small_spec, backend=make_backend("faiss", "IVF2,SQ8"))
    assert index.approximate and report.backend.endswith(": built")
    before = centroids(index)
    added, report = index.add(extra)
    state = added.manifest["backend"]["state"]
    assert state["mode"] == "incremental" and (state["added"], state["removed"]) == (2, 0)
    assert ann_index(added).ntotal == 12 and state["trained_on"] == 10
    np.testing.assert_array_equal(centroids(added), before)  # not retrained
    assert added.search(extra[1], k=1)[0].path == extra[1]
    removed, report = added.remove([scenes[0]])
    assert removed.manifest["backend"]["state"]["mode"] == "incremental" and ann_index(removed).ntotal == 11
    assert scenes[0] not in [r.path for r in removed.search(scenes[0], k=11)]
    np.testing.assert_array_equal(centroids(removed), before)


def test_changed_file_is_replaced_under_its_id(tmp_path, scene_paths, small_spec) -> None:
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for path in scene_paths[0]:
        shutil.copy(path, folder)
    target = folder / "scene_03.jpg"
    index, _ = matchlens.Index.build(sorted(map(str, folder.iterdir())), tmp_path / "i", small_spec,
                                     backend=make_backend("faiss", "HNSW8"))
    old_id = index.search(target, k=1)[0].id
    make_scene(77).save(target, quality=92)
    updated, _ = index.add([str(target)])
    state = updated.manifest["backend"]["state"]
    # HNSW cannot delete: the changed image forces a rebuild of the graph (no training to lose)
    assert state["mode"] == "built" and ann_index(updated).ntotal == 10
    hit = updated.search(target, k=1)[0]
    assert hit.id == old_id and hit.score > 0.999


def test_rebuild_of_an_ivf_index_on_a_refitted_whitening_retrains(tmp_path, small_spec) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(20):
        make_scene(300 + i, size=(160, 120)).save(folder / f"s{i:02d}.png")
    spec = small_spec.replace(whitening="pcaw", whitening_params={"dim": 8, "min_images": 8})
    paths = sorted(map(str, folder.iterdir()))
    index, _ = matchlens.Index.build(paths[:12], tmp_path / "i", spec, backend=make_backend("faiss", "IVF2,Flat"))
    assert index.dim == 8 and ann_index(index).d == 8
    # a build refits the whitening on the new collection: every vector moves, so the index is rebuilt
    rebuilt, _ = matchlens.Index.build(paths, tmp_path / "i", spec)
    assert rebuilt.manifest["backend"]["state"]["mode"] == "built" and ann_index(rebuilt).ntotal == 20
    # add keeps the whitening: only the new vectors are written
    more = folder / "more.png"
    make_scene(999, size=(160, 120)).save(more)
    added, _ = rebuilt.add([str(more)])
    assert added.manifest["backend"]["state"]["mode"] == "incremental"


def test_failed_backend_write_leaves_the_previous_index_intact(tmp_path, scene_paths, small_spec, monkeypatch) -> None:
    from matchlens.index.backends.faiss_backend import FaissBackend

    scenes, extra = scene_paths
    index, _ = matchlens.Index.build(scenes, tmp_path / "i", small_spec, backend=make_backend("faiss", "IVF2,SQ8"))

    def full_disk(self, job):
        (job.tmp / INDEX_FILE).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FaissBackend, "write", full_disk)
    with pytest.raises(IndexError_, match="previous index is intact"):
        index.add(extra)
    monkeypatch.undo()
    reopened = matchlens.open_index(tmp_path / "i")
    assert reopened.generation == index.generation and reopened.size == 10
    assert reopened.search(scenes[4], k=1)[0].path == scenes[4]


def test_switching_backend_on_an_existing_index(tmp_path, scene_paths, small_spec) -> None:
    scenes, _ = scene_paths
    index, _ = matchlens.Index.build(scenes, tmp_path / "i", small_spec)
    hnsw, report = matchlens.Index.build(scenes, tmp_path / "i", small_spec, backend=make_backend("faiss", "HNSW8"))
    assert report.reused == 10 and report.computed == 0 and hnsw.approximate
    kept, _ = matchlens.Index.build(scenes, tmp_path / "i", small_spec)  # no backend given: keep HNSW
    assert kept.manifest["backend"]["factory"] == "HNSW8"
    flat, _ = matchlens.Index.build(scenes, tmp_path / "i", small_spec, backend=None)
    assert flat.backend.exact and not (flat.store.path / INDEX_FILE).exists()


def test_batched_search_equals_one_query_at_a_time(tmp_path, scene_paths, small_spec) -> None:
    scenes, _ = scene_paths
    index, _ = matchlens.Index.build(scenes, tmp_path / "i", small_spec, backend=make_backend("faiss", "IVF2,SQ8"))
    queries = np.asarray(index.vectors())
    scores, rows = index.search_vectors(queries, 4)
    for i, q in enumerate(queries):
        one_scores, one_rows = index.search_vectors(q[None], 4)
        np.testing.assert_array_equal(one_rows[0], rows[i])
        np.testing.assert_allclose(one_scores[0], scores[i], atol=1e-6)


def test_diffusion_and_dba_on_an_approximate_backend(tmp_path, scene_paths, small_spec, monkeypatch) -> None:
    from matchlens.pipeline.context import IndexContext
    from matchlens.rerank import diffusion

    scenes, _ = scene_paths
    index, _ = matchlens.Index.build(scenes, tmp_path / "i", small_spec, backend=make_backend("faiss", "IVF2,SQ8"))
    seen = []
    real = diffusion.build_knn_graph
    monkeypatch.setattr(diffusion, "build_knn_graph", lambda *a, **kw: seen.append(kw.get("search")) or real(*a, **kw))
    shortlist = index.rank(scenes[2], depth=10, rerank="diffusion:k=10,knn=3")
    assert sorted(shortlist.rows.tolist()) == list(range(10))
    # the graph's neighbours came from the index's own (approximate) search, and it is stored
    assert seen and seen[0] is not None and seen[0].__self__.index is index.store
    # knn=3 counts the vector itself (the reference's k): 2 others, and the cache is named by the others
    assert list((tmp_path / "i" / "cache" / "diffusion").glob(f"{index.generation}-k2-*.npz"))
    assert IndexContext(index.store).approximate
    # on 10 vectors the approximate search is exact, so diffusion must agree with the Flat index's
    flat, _ = matchlens.Index.build(scenes, tmp_path / "i", small_spec, backend=None)
    expected = flat.rank(scenes[2], depth=10, rerank="diffusion:k=10,knn=3")
    assert seen[-1] is None  # the exact index builds its graph the exact way
    np.testing.assert_array_equal(shortlist.rows, expected.rows)
    np.testing.assert_allclose(shortlist.scores, expected.scores, rtol=1e-4)
    index = flat.build(scenes, tmp_path / "i", small_spec, backend=make_backend("faiss", "IVF2,SQ8"))[0]
    augmented, report = index.set_dba({"k": 2})
    assert augmented.manifest["backend"]["state"]["mode"] == "built"  # every vector moved
    np.testing.assert_allclose(np.linalg.norm(augmented.vectors(), axis=1), 1, atol=1e-5)
    assert augmented.search(scenes[6], k=1)[0].path == scenes[6]


def test_cli_backend_options_and_info(tmp_path, scenes_dir, capsys) -> None:
    root = tmp_path / "i"
    code, _, err = run_cli(capsys, "index", scenes_dir, "-i", root, "--max-side", "128", "-q",
                           "--factory", "IVF2,SQ8", "--train-size", "8", "--backend-params", "nprobe=2,refine=4")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "info", root, "--json")
    info = json.loads(out)
    assert info["backend"].startswith("faiss IVF2,SQ8 (nprobe=2, refine=4): trained on 8")
    code, out, _ = run_cli(capsys, "search", root, scenes_dir / "scene_05.jpg", "-k", "1", "--json")
    assert json.loads(out)[0]["path"].endswith("scene_05.jpg")
    code, _, err = run_cli(capsys, "index", scenes_dir, "-i", tmp_path / "bad", "--max-side", "128", "-q",
                           "--factory", "IVF2,PQ7")
    assert code == 2 and err.count("\n") == 1 and "multiple of the number of subquantizers" in err
    assert not (tmp_path / "bad" / "CURRENT").exists()


def test_dba_beyond_the_exact_limit_finds_neighbours_with_the_backend(tmp_path, scene_paths, small_spec,
                                                                      monkeypatch) -> None:
    from matchlens.index import writer as writer_module
    from matchlens.pipeline import build as dba  # the builder's own reference to dba_vectors

    scenes, _ = scene_paths
    index, _ = matchlens.Index.build(scenes, tmp_path / "i", small_spec, backend=make_backend("faiss", "HNSW8"))
    exact, _ = index.set_dba({"k": 3})
    monkeypatch.setattr(writer_module, "SCRATCH_EXACT_MAX", 5)  # pretend 10 images are "many"
    seen = []
    real = dba.dba_vectors
    monkeypatch.setattr(dba, "dba_vectors", lambda *a, **kw: seen.append(kw.get("search")) or real(*a, **kw))
    approximate, _ = matchlens.open_index(tmp_path / "i").set_dba({"k": 3})
    assert seen and seen[0] is not None  # the neighbours came from a temporary HNSW index
    # on 10 vectors HNSW is exact: the same augmented vectors as the exact path
    np.testing.assert_allclose(approximate.vectors(), exact.vectors(), atol=1e-6)
    assert not list((tmp_path / "i").rglob(".dba-neighbours"))
