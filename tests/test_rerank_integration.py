"""Re-ranking wired into the index, the API and the CLI: chains, DBA stored and reversible, caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import matchlens
from matchlens.errors import ConfigError
from matchlens.rerank import describe_chain, parse_chain
from tests.conftest import make_scene, run_cli


def test_chain_syntax_round_trips_and_rejects_nonsense():
    chain = parse_chain("sv:k=50,min_inliers=10,aqe:k=3,diffusion")
    assert [r.name for r in chain] == ["sv", "aqe", "diffusion"]
    assert chain[0].config["k"] == 50 and chain[0].config["min_inliers"] == 10 and chain[1].config["k"] == 3
    assert [r.name for r in parse_chain(describe_chain(chain))] == ["sv", "aqe", "diffusion"]
    for bad in ("k=3", "nope", "aqe:k=0", "aqe:q=1", "sv:k=x"):
        with pytest.raises(ConfigError):
            parse_chain(bad)


def test_every_reranker_runs_through_index_search(built_index, scenes_dir):
    query = scenes_dir / "scene_03.jpg"
    plain = built_index.search(query, k=10)
    for chain in ("aqe:k=2", "alpha_qe:k=3", "kr:k=10,k1=3,k2=2", "diffusion:k=10,knn=3,query_knn=3", "sv:k=5"):
        results = built_index.search(query, k=10, rerank=chain)
        assert len(results) == 10 and sorted(r.path for r in results) == sorted(r.path for r in plain), chain
        if not chain.startswith("diffusion"):  # on 10 unrelated scenes diffusion just follows the graph
            assert results[0].path == plain[0].path, chain


def test_spatial_verification_lifts_a_partial_view_and_caches_features(tmp_path, scenes_dir, small_spec):
    index = matchlens.build_index(scenes_dir, tmp_path / "i", spec=small_spec)
    scene = Image.open(scenes_dir / "scene_07.jpg")
    partial = scene.crop((60, 40, 260, 200)).rotate(10, expand=True, fillcolor=(128, 128, 128))
    path = tmp_path / "partial.png"
    partial.resize((400, 400)).save(path)
    verified = index.search(path, k=3, rerank="sv:k=10,min_inliers=8")
    assert Path(verified[0].path).name == "scene_07.jpg" and verified[0].score > 1  # verified scores sit above 1
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "i" / "cache").rglob("*.npz")}
    assert len(cached) >= 10  # database features kept for the next verification
    again = index.search(path, k=3, rerank="sv:k=10,min_inliers=8")
    assert [r.path for r in again] == [r.path for r in verified]
    assert {p: p.stat().st_mtime_ns for p in cached} == cached  # nothing recomputed or rewritten


def test_dba_is_stored_reversible_and_kept_across_adds(tmp_path, scenes_dir, small_spec):
    index = matchlens.build_index(scenes_dir, tmp_path / "i", spec=small_spec)
    plain = np.array(index.vectors())
    augmented, _ = index.set_dba({"k": 2})
    assert augmented.manifest["dba"]["k"] == 2
    assert not np.allclose(np.array(augmented.vectors()), plain)
    assert np.allclose(np.linalg.norm(augmented.vectors(), axis=1), 1, atol=1e-5)
    extra = tmp_path / "x.png"
    make_scene(61).save(extra)
    grown, _ = augmented.add([str(extra)])
    assert grown.manifest["dba"]["k"] == 2 and grown.size == 11
    restored, _ = grown.remove([str(extra)])[0].set_dba(None)
    assert restored.manifest.get("dba") is None
    np.testing.assert_allclose(np.array(restored.vectors()), plain, atol=1e-6)


def test_cli_rerank_and_dba(capsys, tmp_path, scenes_dir):
    root = tmp_path / "i"
    code, _, err = run_cli(capsys, "index", scenes_dir, "--index", root, "--max-side", "128", "--dba", "k=2", "-q")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "info", root, "--json")
    assert json.loads(out)["dba"]["k"] == 2
    code, out, err = run_cli(capsys, "search", root, scenes_dir / "scene_01.jpg", "-k", "3", "--json",
                             "--rerank", "sv:k=5,aqe:k=2")
    assert code == 0, err
    assert Path(json.loads(out)[0]["path"]).name == "scene_01.jpg"
    code, out, _ = run_cli(capsys, "dba", root, "off")
    assert code == 0 and "dba: off" in out
    code, _, err = run_cli(capsys, "search", root, scenes_dir / "scene_01.jpg", "--rerank", "bogus:k=1")
    assert code == 2 and "unknown reranker" in err and "Traceback" not in err


def test_chain_drops_the_padding_rows_of_an_approximate_search():
    """An ANN backend pads a short result with row -1; as an index -1 would be the last image, so
    run_chain removes it before any reranker sees the shortlist."""
    from matchlens.rerank import QueryInput, Reranker, Shortlist, run_chain

    seen = []

    class Spy(Reranker):
        name = "spy"

        def rerank(self, query, shortlist, ctx):
            seen.append(shortlist.rows.tolist())
            return shortlist

    out = run_chain([Spy()], QueryInput(vector=np.ones(2, np.float32)),
                    Shortlist(np.array([4, 2, -1, -1]), np.array([0.9, 0.5, 0.0, 0.0])), ctx=None)
    assert seen == [[4, 2]] and out.rows.tolist() == [4, 2]
