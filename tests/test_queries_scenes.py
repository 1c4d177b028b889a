"""The generated CSS-like scenes: determinism, held-out pairs, modifications, predicates, files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from matchlens.errors import ConfigError
from matchlens.queries.scenes import (COLOURS, POSITIONS, PREDICATES, SHAPES, SIZES, Scene, SceneConfig, SceneObject, caption, generate,
                                      geometric_predicate, read_collection, scene_graph, write_collection)

SMALL = SceneConfig(seed=3, train_references=40, test_references=15, mods_per_reference=3)


@pytest.fixture(scope="module")
def scene_set():
    return generate(SMALL)


def test_generation_is_deterministic_and_seeded(scene_set) -> None:
    again = generate(SMALL)
    assert [s.key() for s in again.scenes.values()] == [s.key() for s in scene_set.scenes.values()]
    assert again.triplets == scene_set.triplets
    first = next(iter(scene_set.scenes))
    assert np.array_equal(again.render(first), scene_set.render(first))
    other = generate(SceneConfig(seed=4, train_references=40, test_references=15, mods_per_reference=3))
    assert [t.text for t in other.triplets] != [t.text for t in scene_set.triplets]


def test_counts_and_held_out_pairs(scene_set) -> None:
    train, test = scene_set.triplets_of("train"), scene_set.triplets_of("test")
    assert len(train) == 40 * 3 and len(test) == 15 * 3
    held = set(SMALL.held_out)
    assert len(held) == 6
    # no train scene (reference or target) holds a held-out (shape, colour) pair ...
    assert not set().union(*(s.pairs() for s in scene_set.split("train"))) & held
    # ... and every test triplet involves one
    for t in test:
        assert (scene_set.scenes[t.reference].pairs() | scene_set.scenes[t.target].pairs()) & held


def _named(words: list[str]) -> dict[str, str]:
    """The attributes a description names ("top-left small red object" → position, size, colour)."""
    named = {}
    for w in words:
        key = "position" if w in POSITIONS else "size" if w in SIZES else "colour" if w in COLOURS else \
            "shape" if w in SHAPES else None
        if key:
            named[key] = w
    return named


def _hit(obj: SceneObject, named: dict[str, str]) -> bool:
    return all(getattr(obj, k) == v for k, v in named.items())


def test_modifications_do_what_the_text_says(scene_set) -> None:
    assert {t.kind for t in scene_set.triplets} == {"add", "remove", "change"}
    for t in scene_set.triplets:
        ref, tgt = scene_set.scenes[t.reference], scene_set.scenes[t.target]
        words = t.text.split()
        assert ref.key() != tgt.key(), t
        if t.kind == "add":
            new = set(tgt.key()) - set(ref.key())
            assert words[0] == "add" and len(tgt.objects) == len(ref.objects) + 1 and len(new) == 1
            added = next(o for o in tgt.objects if o.attributes() in new)
            assert _hit(added, _named(words[1:])), t
        elif t.kind == "remove":
            named = _named(words[1:])
            assert words[0] == "remove" and named
            expected = sorted(o.attributes() for o in ref.objects if not _hit(o, named))
            assert list(tgt.key()) == expected and expected, t
        else:
            assert words[0] == "make"
            value, named = words[-1], _named(words[1:-1])
            attribute = "colour" if value in COLOURS else "size"
            expected = sorted((o.cell[0], o.cell[1], o.shape, value if attribute == "colour" else o.colour,
                               value if attribute == "size" else o.size) if _hit(o, named) else o.attributes()
                              for o in ref.objects)
            assert list(tgt.key()) == expected, t


def test_rendering_looks_like_its_scene(scene_set) -> None:
    scene = scene_set.split("train")[0]
    image = scene_set.render(scene)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    for obj in scene.objects:
        if obj.size == "small" and any(o.cell == obj.cell and o is not obj for o in scene.objects):
            continue
        x0, y0, x1, y1 = (int(round(c)) for c in obj.box)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        patch = image[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).astype(float).mean(0)
        distances = {name: np.linalg.norm(patch - np.asarray(rgb) * 0.8) for name, rgb in COLOURS.items()}
        # the centre of the box is the object's colour (within shading), not the background
        assert min(distances, key=distances.__getitem__) == obj.colour or \
            distances[obj.colour] < 90, (obj, patch)
    # the same content rendered with another seed differs in pixels (light, jitter of noise)
    twin = Scene("x", scene.split, scene.objects, scene.render_seed + 1)
    assert np.abs(scene_set.render(twin).astype(int) - image.astype(int)).mean() > 1.0


def test_geometric_predicates_follow_sg2im() -> None:
    box = (10.0, 10.0, 20.0, 20.0)
    assert geometric_predicate(box, (30.0, 10.0, 40.0, 20.0)) == "left of"
    assert geometric_predicate((30.0, 10.0, 40.0, 20.0), box) == "right of"
    assert geometric_predicate(box, (10.0, 30.0, 20.0, 40.0)) == "above"
    assert geometric_predicate((10.0, 30.0, 20.0, 40.0), box) == "below"
    assert geometric_predicate((12.0, 12.0, 18.0, 18.0), box) == "inside"
    assert geometric_predicate(box, (12.0, 12.0, 18.0, 18.0)) == "surrounding"


def test_scene_graphs_hold_all_six_predicates(scene_set) -> None:
    seen = {r.predicate for s in scene_set.scenes.values() for r in scene_graph(s)}
    assert seen == set(PREDICATES)
    scene = Scene("s", "train", (SceneObject("cube", "red", "large", (0, 0), (2.0, 2.0, 18.0, 18.0)),
                                 SceneObject("sphere", "blue", "small", (0, 0), (6.0, 6.0, 14.0, 14.0)),
                                 SceneObject("cylinder", "gray", "small", (2, 2), (46.0, 46.0, 56.0, 56.0))), 0)
    graph = {(r.subject, r.object): r.predicate for r in scene_graph(scene)}
    assert graph[(0, 1)] == "surrounding" and graph[(1, 0)] == "inside"
    assert len(graph) == 6
    assert caption(scene) == ("a large red cube at top-left, a small blue sphere inside it "
                              "and a small gray cylinder at bottom-right")


def test_bad_configs_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="held-out"):
        SceneConfig(held_out=(("cube", "pink"),))
    with pytest.raises(ConfigError, match="min_objects"):
        SceneConfig(min_objects=5, max_objects=3)


def test_written_collection_round_trips(tmp_path: Path) -> None:
    small = generate(SceneConfig(seed=1, train_references=4, test_references=2, mods_per_reference=2))
    folder = write_collection(small, tmp_path / "css")
    pngs = sorted((folder / "images").glob("*.png"))
    assert len(pngs) == len(small.scenes) == 4 * 3 + 2 * 3
    first = next(iter(small.scenes.values()))
    on_disk = cv2.imread(str(folder / first.file_name))[:, :, ::-1]
    assert np.array_equal(on_disk, small.render(first))
    coco = json.loads((folder / "annotations.json").read_text())
    assert {c["name"] for c in coco["categories"]} == {"cube", "sphere", "cylinder"}
    assert len(coco["annotations"]) == sum(len(s.objects) for s in small.scenes.values())
    image = next(i for i in coco["images"] if i["scene"] == first.id)
    boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
    assert sorted(map(tuple, boxes)) == sorted(
        tuple(round(v, 2) for v in (o.box[0], o.box[1], o.box[2] - o.box[0], o.box[3] - o.box[1])) for o in first.objects)
    with open(folder / "triplets.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(small.triplets) and all((folder / r["reference"]).is_file() for r in rows)
    with open(folder / "captions.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(small.scenes)
    back = read_collection(folder)
    assert back.triplets == small.triplets and back.config == small.config
    assert [s.key() for s in back.scenes.values()] == [s.key() for s in small.scenes.values()]
    with pytest.raises(ConfigError):
        read_collection(tmp_path)
