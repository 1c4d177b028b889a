"""The demo (the README's main job) end to end: real photos, altered queries, index, search, HTML."""

from __future__ import annotations

import re

from matchlens.demo import run_demo
from matchlens.demo.collection import ALTERATIONS, build_demo_collection


def test_demo_collection_has_every_alteration_and_the_stereo_pair(tmp_path):
    collection, queries_dir, queries = build_demo_collection(tmp_path)
    images = sorted(p.name for p in collection.iterdir())
    assert len(images) == 26 and "chelsea.jpg" in images and "china.jpg" in images
    assert {q.alteration for q in queries} == set(ALTERATIONS) | {"stereo view"}
    assert all((queries_dir / q.image).is_file() and q.source in images for q in queries)
    # Deterministic: a second build writes the same query files.
    first = {q.image: (queries_dir / q.image).read_bytes() for q in queries}
    build_demo_collection(tmp_path)
    assert first == {q.image: (queries_dir / q.image).read_bytes() for q in queries}


def test_demo_runs_end_to_end_and_ranks_most_sources_first(tmp_path):
    result = run_demo(tmp_path / "demo")
    assert result.n_images == 26 and result.n_queries == 53
    assert result.top1_correct >= 0.85 * result.n_queries
    assert result.map >= 0.85
    page = result.html_path.read_text(encoding="utf-8")
    assert page.count("<tr>") == result.n_queries
    assert "✔ correct" in page and re.search(r"mAP \d+\.\d", page)
    assert page.count("data:image/jpeg;base64,") == result.n_queries * 6  # query + top 5, embedded
