"""``--rerank auto``: verified average query expansion, adaptive per query, falling back to the
global ranking when nothing verifies."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import matchlens
from matchlens.errors import ConfigError
from matchlens.rerank import RERANKERS, Shortlist, parse_chain
from matchlens.rerank.auto import AutoRerank
from tests.test_rerank_spatial import textured_scene

VIEWS = 3  # views of the object in the collection


def _view(image: Image.Image, angle: float, box: tuple[int, int, int, int]) -> Image.Image:
    return image.rotate(angle, resample=Image.BICUBIC).crop(box).resize((300, 220), Image.LANCZOS)


@pytest.fixture(scope="module")
def collection(tmp_path_factory, small_spec):
    """One textured object in VIEWS views among 8 other scenes; a query view of it and an
    unrelated query scene."""
    folder = tmp_path_factory.mktemp("auto")
    base = textured_scene(1)
    boxes = [(20, 15, 300, 225), (40, 30, 280, 210), (10, 10, 260, 200), (50, 20, 310, 230)]
    for i in range(VIEWS):
        _view(base, 5 * (i + 1), boxes[i]).save(folder / f"object_{i}.png")
    for seed in range(10, 18):
        textured_scene(seed).save(folder / f"other_{seed}.png")
    queries = tmp_path_factory.mktemp("auto-queries")
    _view(base, -8, boxes[3]).save(queries / "object_query.png")
    textured_scene(99).save(queries / "unrelated.png")
    index = matchlens.build_index(folder, tmp_path_factory.mktemp("auto-idx") / "i", spec=small_spec)
    return index, queries


def test_auto_is_a_registered_chain_with_validated_parameters():
    assert "auto" in RERANKERS.names()
    (step,) = parse_chain("auto:k=50,rounds=2")
    assert isinstance(step, AutoRerank) and step.depth == 50
    with pytest.raises(ConfigError):
        parse_chain("auto:min_inliers=0")
    with pytest.raises(ConfigError):
        parse_chain("auto:rounds=-1")


def test_verified_views_come_first_and_the_expansion_uses_exactly_them(collection):
    index, queries = collection
    step = AutoRerank(k=20)
    results = index.search(queries / "object_query.png", k=5, rerank=[step])
    top = [r.path.rsplit("/", 1)[-1] for r in results[:VIEWS]]
    assert sorted(top) == [f"object_{i}.png" for i in range(VIEWS)]
    # adaptive: the query was expanded with the verified views, not with a fixed count
    expanded = sorted(index.entry_for_row(r).path.rsplit("/", 1)[-1] for r in step.last_expansion)
    assert expanded == [f"object_{i}.png" for i in range(VIEWS)]
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    chum = index.search(queries / "object_query.png", k=5, rerank="auto:k=20,order=verified")
    assert sorted(r.path for r in chum[:VIEWS]) == sorted(r.path for r in results[:VIEWS])
    assert chum[VIEWS - 1].score > 1.0 > chum[VIEWS].score  # verified first, above every cosine


def test_a_chance_match_does_not_jump_over_a_sure_descriptor_match():
    """The blend: an image the descriptors are sure of (cosine 0.9, unverified) stays above one with
    a low cosine and a few dozen inliers; with order=verified it would not."""
    step = AutoRerank(bonus=0.3, cap=100)
    ranking = Shortlist(np.array([0, 1, 2]), np.array([0.9, 0.6, 0.5], np.float32))
    blended = step._blend(ranking, {1: 25, 2: 5})
    assert blended.rows.tolist() == [0, 1, 2]
    assert blended.scores[1] == pytest.approx(0.6 + 0.3 * 25 / 100)


def test_a_query_nothing_verifies_keeps_its_global_ranking(collection):
    index, queries = collection
    step = AutoRerank(k=20)
    plain = index.search(queries / "unrelated.png", k=11)
    auto = index.search(queries / "unrelated.png", k=11, rerank=[step])
    assert step.last_expansion == []
    assert [r.path for r in auto] == [r.path for r in plain]
    assert np.allclose([r.score for r in auto], [r.score for r in plain])


def test_a_second_round_verifies_more_and_never_loses_verified_views(collection):
    index, queries = collection
    one = [r.path for r in index.search(queries / "object_query.png", k=VIEWS, rerank="auto:k=2")]
    two = [r.path for r in index.search(queries / "object_query.png", k=VIEWS, rerank="auto:k=2,rounds=2,k_next=5")]
    assert sum("object_" in p for p in two) == VIEWS >= sum("object_" in p for p in one)
