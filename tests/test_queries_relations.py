"""Relation queries ⟨subject, predicate, object⟩ (issue 22, part C): the predicate vocabulary and
parser, the scene-graph network and its heads, COCO box import kept in step with the index, and
``matchlens import-boxes`` / ``train-relations`` / ``search --relation``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_module, run_cli

torch = require_module("torch")

from matchlens.errors import ConfigError, IndexError_, SourceError  # noqa: E402
from matchlens.queries.relations import (PREDICATES, QUERY_PARTS, Relation, parse_relations,  # noqa: E402
                                         predicate_names, predicate_of, scene_triplets)

CATEGORIES = ["cube", "sphere", "cylinder", "traffic light"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- vocabulary and parsing ----------------------------------------------------------------------
def test_predicates_are_the_generators_and_sg2ims():
    from matchlens.queries import scenes

    assert predicate_names() == list(scenes.PREDICATES)
    rng = np.random.default_rng(0)
    for _ in range(500):
        a, b = np.sort(rng.uniform(0, 100, (2, 2, 2)), axis=1)  # two boxes, x and y sorted
        s, o = (a[0, 0], a[1, 0], a[0, 1], a[1, 1]), (b[0, 0], b[1, 0], b[0, 1], b[1, 1])
        assert predicate_of(s, o) == scenes.geometric_predicate(s, o)
    assert predicate_of((0, 0, 10, 10), (2, 2, 4, 4)) == "surrounding"
    assert predicate_of((2, 2, 4, 4), (0, 0, 10, 10)) == "inside"
    assert predicate_of((0, 0, 1, 1), (5, 0, 6, 1)) == "left of"
    assert predicate_of((0, 0, 1, 1), (0, 5, 1, 6)) == "above"  # image y grows downwards
    for name in predicate_names():  # the inverse of the inverse is the predicate
        assert PREDICATES.get(PREDICATES.get(name).inverse).inverse == name


def test_scene_triplets_cover_every_ordered_pair():
    boxes = [(0, 0, 1, 1), (5, 0, 6, 1), (0, 5, 1, 6)]
    triplets = scene_triplets(boxes)
    assert len(triplets) == 6 and {(s, o) for s, _, o in triplets} == {(s, o) for s in range(3) for o in range(3) if s != o}
    names = predicate_names()
    assert (0, names.index("left of"), 1) in triplets and (2, names.index("below"), 0) in triplets


def test_parse_relations_and_one_line_errors():
    assert parse_relations("cube left of sphere", CATEGORIES) == [Relation("cube", "left of", "sphere")]
    assert parse_relations("A Traffic-Light is to the right of the cylinder; sphere inside cube", CATEGORIES) == [
        Relation("traffic light", "right of", "cylinder"), Relation("sphere", "inside", "cube")]
    with pytest.raises(ConfigError, match="known predicates: left of, right of, above, below, inside, surrounding"):
        parse_relations("cube next to sphere", CATEGORIES)
    with pytest.raises(ConfigError, match="unknown object 'pyramid'.*known categories: cube, cylinder, sphere, traffic light"):
        parse_relations("cube left of pyramid", CATEGORIES)
    with pytest.raises(ConfigError, match="lacks a subject"):
        parse_relations("left of sphere", CATEGORIES)
    with pytest.raises(ConfigError, match="empty relation"):
        parse_relations("  ; ", CATEGORIES)
    assert QUERY_PARTS.names() == ["o", "p", "s", "s+o", "s+p+o"]


# --- the network ------------------------------------------------------------------------------------
def _random_scenes(count: int, seed: int = 0, objects: tuple[int, int] = (2, 5), placed: bool = False):
    """Random boxes of random categories; ``placed``: each category near a place of its own (as
    sky is high and road low in photos), so that the layout can be learned."""
    rng = np.random.default_rng(seed)
    places = rng.uniform(0, 0.7, (len(CATEGORIES), 2))
    out = []
    for _ in range(count):
        n = int(rng.integers(*objects))
        labels = rng.integers(0, len(CATEGORIES), n)
        xy = places[labels] + rng.uniform(0, 0.05, (n, 2)) if placed else rng.uniform(0, 0.75, (n, 2))
        wh = rng.uniform(0.08, 0.25, (n, 2))
        out.append((np.concatenate([xy, xy + wh], 1).astype(np.float32), labels))
    return out


def test_triplet_mask_targets_label_subject_object_and_the_inner_box():
    from matchlens.queries.scenegraph import superboxes, triplet_mask_targets

    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0], [0.1, 0.2, 0.4, 0.6]])
    triplets = torch.tensor([[0, 0, 1], [0, 5, 2]])
    labels = triplet_mask_targets(boxes, triplets, 4)
    assert (labels[0, :, :2] == 1).all() and (labels[0, :, 2:] == 2).all()  # subject left, object right
    assert torch.allclose(superboxes(boxes, triplets)[1], boxes[0])
    inner = labels[1]  # the object (small box inside the subject) wins where they overlap
    assert (inner == 2).sum() >= 1 and (inner == 1).sum() > (inner == 2).sum() and (inner == 0).sum() == 0


def test_training_lowers_the_losses_and_notriplet_has_no_triplet_heads():
    from matchlens.queries.rel_train import TrainSettings, graphs_of, train_relation_model
    from matchlens.queries.scenegraph import LayoutLosses

    scenes = _random_scenes(48, placed=True)
    small = dict(dim=16, hidden=32, layers=2, batch=48, seed=1)
    untrained = train_relation_model(scenes, CATEGORIES, TrainSettings(epochs=1, lr=0.0, **small))
    trained = train_relation_model(scenes, CATEGORIES, TrainSettings(epochs=30, lr=1e-2, **small))
    graphs, owner = graphs_of(scenes, 8)
    assert graphs.triplets.shape == (sum(len(b) * (len(b) - 1) for b, _ in scenes), 3) and len(owner) == len(graphs.triplets)
    with torch.no_grad():
        before, after = (LayoutLosses()(m.net, graphs) for m in (untrained, trained))
    for key in ("box", "triplet_mask", "triplet_superbox"):
        assert after[key] < 0.7 * before[key], key
    notriplet = train_relation_model(scenes, CATEGORIES, TrainSettings(epochs=1, triplet=False, **small))
    assert set(notriplet.facts["final_losses"]) == {"box", "total"} and not notriplet.triplet
    with pytest.raises(ConfigError, match="two boxes"):
        train_relation_model([(np.zeros((1, 4), np.float32), np.zeros(1, np.int64))], CATEGORIES)


def test_query_graph_equals_the_graph_of_a_two_object_image():
    """A query is embedded as an image's graph is built, so an image holding exactly the queried
    pair ranks first under every structure that compares subject and object."""
    from matchlens.queries.rel_search import embed_relations, embed_scenes, relation_scores
    from matchlens.queries.rel_train import TrainSettings, train_relation_model

    model = train_relation_model(_random_scenes(32), CATEGORIES, TrainSettings(epochs=1, dim=16, hidden=32, layers=3))
    left = np.array([[0.1, 0.4, 0.3, 0.6], [0.6, 0.4, 0.8, 0.6]], np.float32)
    database = [(left, np.array([1, 2])), (left, np.array([0, 1])), (left[::-1].copy(), np.array([0, 1])),
                (left, np.array([2, 0])), (np.concatenate([left, [[0.4, 0.0, 0.5, 0.1]]]), np.array([3, 3, 3]))]
    embedded = embed_scenes(model, database)
    assert embedded.scenes == 5 and len(embedded.owner) == 2 + 2 + 2 + 2 + 6
    query = embed_relations(model, parse_relations("cube left of sphere", CATEGORIES))
    for structure in ("s+o", "s+p+o"):
        scores = relation_scores(query, embedded, structure)
        assert int(np.argmax(scores)) == 1 and scores[1] > 1e3, structure  # distance 0: S = 1/d is huge
    both = embed_relations(model, parse_relations("cube left of sphere; sphere right of cube", CATEGORIES))
    assert int(np.argmax(relation_scores(both, embedded, "s+p+o"))) == 1


def test_model_file_round_trip_and_refusals(tmp_path):
    from matchlens.errors import WeightsError
    from matchlens.queries.rel_search import embed_relations
    from matchlens.queries.rel_train import TrainSettings, load_relation_model, train_relation_model

    model = train_relation_model(_random_scenes(16), CATEGORIES, TrainSettings(epochs=1, dim=16, hidden=32, layers=2))
    path = model.save(tmp_path / "rel.pt")
    loaded = load_relation_model(path)
    assert loaded.categories == CATEGORIES and loaded.triplet and loaded.net.config == model.net.config
    relation = parse_relations("sphere above cube", CATEGORIES)
    assert np.allclose(embed_relations(model, relation).select("s+p+o"), embed_relations(loaded, relation).select("s+p+o"))
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="cannot be read"):
        load_relation_model(tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        load_relation_model(tmp_path / "none.pt")


# --- an index with boxes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """16 generated CSS-like scenes written as a collection (images + COCO annotations)."""
    from matchlens.queries.scenes import SceneConfig, generate, write_collection

    scenes = generate(SceneConfig(seed=3, train_references=16, test_references=0, mods_per_reference=0, held_out=()))
    return write_collection(scenes, tmp_path_factory.mktemp("relations") / "coll")


@pytest.fixture(scope="module")
def rel_index(collection, small_spec, tmp_path_factory):
    import matchlens

    return matchlens.build_index(collection / "images", tmp_path_factory.mktemp("relidx") / "index", spec=small_spec)


def _coco(collection: Path) -> dict:
    return json.loads((collection / "annotations.json").read_text())


def test_import_boxes_aligns_with_rows_and_generations(collection, rel_index, tmp_path):
    import shutil

    import matchlens
    from matchlens.queries.coco import import_boxes, read_boxes

    coco = _coco(collection)
    report = import_boxes(rel_index.store, collection / "annotations.json")
    assert report.images == 16 and report.boxes == len(coco["annotations"]) and report.categories == ["cube", "sphere", "cylinder"]
    boxes = read_boxes(rel_index.store)
    assert len(boxes.rows) == 16 and boxes.stale == 0
    first = coco["images"][0]
    row = next(e.row for e in rel_index.entries if e.path.endswith(first["file_name"]))
    anns = [a for a in coco["annotations"] if a["image_id"] == first["id"]]
    x, y, w, h = anns[0]["bbox"]
    assert np.allclose(boxes.rows[row][0][0], np.array([x, y, x + w, y + h]) / first["width"], atol=1e-5)
    assert boxes.rows[row][1][0] == anns[0]["category_id"] - 1

    # A copy of the index loses one image: its boxes are stale, the others follow the new rows.
    copy = tmp_path / "copy"
    shutil.copytree(rel_index.root, copy)
    smaller, _ = matchlens.open_index(copy).remove(rel_index.entry_for_row(row).path)
    moved = read_boxes(smaller.store)
    assert moved.stale == 1 and len(moved.rows) == 15 and moved.generation != boxes.generation
    for new_row, (b, _) in moved.rows.items():
        old_row = next(e.row for e in rel_index.entries if e.path == smaller.entry_for_row(new_row).path)
        assert np.allclose(b, boxes.rows[old_row][0])


def test_import_refuses_foreign_ambiguous_and_malformed_files(collection, rel_index, tmp_path):
    from matchlens.queries.coco import boxes_file, import_boxes, read_boxes

    coco = _coco(collection)
    before = boxes_file(rel_index).read_bytes() if boxes_file(rel_index).exists() else None
    extra = dict(coco, images=coco["images"] + [dict(coco["images"][0], id=999, file_name="elsewhere/new.png"),
                                                dict(coco["images"][0], id=998, file_name="other.png")])
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    with pytest.raises(SourceError, match=r"names 2 of 18 images that index .* lacks \(e.g. 'elsewhere/new.png'\)"):
        import_boxes(rel_index.store, tmp_path / "extra.json")
    bad = dict(coco, annotations=[dict(coco["annotations"][0], bbox=[1, 2, 0, 4])])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SourceError, match="has no area"):
        import_boxes(rel_index.store, tmp_path / "bad.json")
    unknown = dict(coco, annotations=[dict(coco["annotations"][0], category_id=77)])
    (tmp_path / "unknown.json").write_text(json.dumps(unknown))
    with pytest.raises(SourceError, match="category_id 77"):
        import_boxes(rel_index.store, tmp_path / "unknown.json")
    after = boxes_file(rel_index).read_bytes() if boxes_file(rel_index).exists() else None
    assert after == before  # a refused file writes nothing
    with pytest.raises(IndexError_, match="import-boxes"):
        read_boxes(type("Bare", (), {"root": tmp_path, "entries": [], "generation": "g"})())


def test_cli_import_train_search(capsys, collection, rel_index, built_index, tmp_path):
    from matchlens.queries.coco import read_boxes
    from matchlens.queries.rel_train import load_relation_model

    code, out, err = run_cli(capsys, "search", built_index.root, "--relation", "cube left of sphere")
    assert code != 0 and "has no box annotations" in err and "Traceback" not in err
    root = rel_index.root
    code, out, _ = run_cli(capsys, "import-boxes", root, collection / "annotations.json")
    assert code == 0 and "for 16 images" in out
    code, out, err = run_cli(capsys, "search", root, "--relation", "cube left of sphere")
    assert code != 0 and "train-relations" in err
    model_path = tmp_path / "rel.pt"
    code, out, _ = run_cli(capsys, "train-relations", root, "--out", model_path, "--epochs", "2", "-q")
    assert code == 0 and model_path.is_file() and "Triplet scene-graph model" in out
    assert load_relation_model(model_path).categories == ["cube", "sphere", "cylinder"]

    # An image of exactly two objects has the query's own graph: it is at distance 0, among the first.
    boxes = read_boxes(rel_index.store)
    row, (b, labels) = next((r, v) for r, v in sorted(boxes.rows.items()) if len(v[1]) == 2)
    relation = f"{boxes.categories[labels[0]]} {predicate_of(b[0], b[1])} {boxes.categories[labels[1]]}"
    code, out, _ = run_cli(capsys, "search", root, "--relation", relation, "--relation-model", model_path,
                           "--relation-parts", "s+p+o", "--json", "-k", "16")
    assert code == 0
    results = json.loads(out)
    assert [r["rank"] for r in results] == list(range(1, 17))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and scores[0] > 1e3
    def graph(bb, ll):
        return {(int(ll[s]), p, int(ll[o])) for s, p, o in scene_triplets(bb.tolist())}

    same = {rel_index.entry_for_row(r).id for r, (bb, ll) in boxes.rows.items()
            if len(ll) == 2 and graph(bb, ll) == graph(b, labels)}
    at_zero = {r["id"] for r in results if r["score"] > 1e3}  # distance ~0 (float noise), ranked first
    assert rel_index.entry_for_row(row).id in same and same <= at_zero

    code, out, _ = run_cli(capsys, "search", root, "--relation", "sphere above cube", "--relation-model", model_path,
                           "--jsonl", "-k", "3")
    line = json.loads(out)
    assert code == 0 and line["query"] == "sphere above cube" and len(line["results"]) == 3 and "search" in line["timings_ms"]


@pytest.mark.parametrize("args, message", [
    (["--relation", "cube next to sphere"], "known predicates: left of, right of, above, below, inside, surrounding"),
    (["--relation", "cube left of pyramid"], "known categories: cube, cylinder, sphere"),
    (["--relation", "cube left of sphere", "--rerank", "sv"], "needs a query image"),
    (["--relation", "cube left of sphere", "--relation-parts", "x"], "choose one of: o, p, s, s+o, s+p+o"),
    (["--relation", "cube left of sphere", "--relation-model", "missing.pt"], "does not exist"),
])
def test_search_relation_errors_are_one_line(capsys, collection, rel_index, tmp_path, args, message):
    from matchlens.queries.coco import import_boxes
    from matchlens.queries.rel_train import TrainSettings, index_model_path, train_on_index

    import_boxes(rel_index.store, collection / "annotations.json")
    stored = index_model_path(rel_index)
    if not stored.exists():
        stored.parent.mkdir(exist_ok=True)
        train_on_index(rel_index.store, TrainSettings(epochs=1, dim=16, hidden=32, layers=2)).save(stored)
    code, _, err = run_cli(capsys, "search", rel_index.root, *args)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_relation_search_goes_through_the_pipeline(collection, rel_index, tmp_path):
    from matchlens.pipeline import Query, SearchPipeline
    from matchlens.queries.coco import import_boxes
    from matchlens.queries.rel_search import relation_searcher
    from matchlens.queries.rel_train import TrainSettings, train_on_index

    import_boxes(rel_index.store, collection / "annotations.json")
    model = train_on_index(rel_index.store, TrainSettings(epochs=1, dim=16, hidden=32, layers=2))
    path = model.save(tmp_path / "rel.pt")
    searcher = relation_searcher(rel_index, path, "s+o")
    assert isinstance(searcher, SearchPipeline) and "relations (s+o)" in searcher.describe()
    answer = searcher.relation("cylinder above cube", k=5)
    assert len(answer.results) == 5 and answer.query == "cylinder above cube"
    assert set(answer.timings_ms) >= {"search", "total"} and not math.isnan(answer.results[0].score)
    with pytest.raises(ConfigError, match="needs a query image"):
        searcher.run(Query("cube left of sphere"), 5, "aqe")


def test_service_relation_route_and_page(collection, rel_index, built_index, tmp_path):
    require_module("fastapi")
    from fastapi.testclient import TestClient

    from matchlens.queries.coco import import_boxes
    from matchlens.queries.rel_train import TrainSettings, train_on_index
    from matchlens.service import create_app

    import_boxes(rel_index.store, collection / "annotations.json")
    path = train_on_index(rel_index.store, TrainSettings(epochs=1, dim=16, hidden=32, layers=2)).save(tmp_path / "rel.pt")
    client = TestClient(create_app(rel_index.root, allowed_hosts=["testserver"], relation_model=path))
    info = client.get("/index").json()["relations"]
    assert info["categories"] == ["cube", "sphere", "cylinder"] and info["predicates"] == predicate_names()
    answer = client.post("/search/relation", data={"relation": "cube left of sphere", "k": 4, "parts": "s+p+o"})
    body = answer.json()
    assert answer.status_code == 200 and len(body["results"]) == 4 and body["parts"] == "s+p+o"
    assert body["results"][0]["thumbnail_url"] == f"/thumbnails/{body['results'][0]['id']}"
    bad = client.post("/search/relation", data={"relation": "cube beside sphere"})
    assert bad.status_code == 400 and "known predicates: left of" in bad.json()["detail"]
    assert client.post("/search/relation", data={"relation": "cube left of sphere", "parts": "q"}).status_code == 400
    page = client.get("/").text + client.get("/static/app.js").text
    assert 'id="relation-form"' in page and "/search/relation" in page

    plain = TestClient(create_app(built_index.root, allowed_hosts=["testserver"]))  # no model: no relation queries
    assert plain.get("/index").json()["relations"] is None
    missing = plain.post("/search/relation", data={"relation": "cube left of sphere"})
    assert missing.status_code == 404 and "train-relations" in missing.json()["detail"]
