"""Generated CSS-like scenes (TIRG's "colour, shape and size" set): images, boxes, captions,
modification texts and scene graphs, deterministic for a seed.

A scene is a few objects on a ``grid × grid`` board (default 3 × 3), each a shape (``cube``,
``sphere``, ``cylinder``, drawn as shaded 2-D renderings), one of CLEVR's 8 colours and a size
(``small`` / ``large``); a small object may sit inside a large one of the same cell (so the
``inside`` / ``surrounding`` predicates occur). Rendering adds a random light direction (Lambert
shading and a highlight), a background gradient, position jitter within the cell and pixel
noise, so that equal scenes never give equal pixels.

From reference scenes, :func:`generate` derives (reference, text, target) triplets with TIRG's
three templates (section 4.3 of the paper):

* ``add``: "add small red cube to top-left" (an attribute left out is chosen at random);
* ``remove``: "remove yellow sphere", "remove middle-center object" (every match is removed);
* ``change``: "make yellow sphere small", "make middle-center object red" (colour or size).

Held-out combinations follow CLEVR-CoGenT as TIRG does: some (shape, colour) pairs
(:attr:`SceneConfig.held_out`) never occur in a ``train`` scene; every ``test`` triplet has one
in its reference or its target. :func:`scene_graph` gives ⟨subject, predicate, object⟩ triplets
with the 6 geometric predicates that sg2im (Johnson et al. 2018) computes from COCO boxes.

:func:`write_collection` writes a folder that the CLI reads: ``images/*.png``,
``annotations.json`` (COCO format: boxes, shape categories, colour and size per box),
``captions.csv``, ``triplets.csv`` and ``scenes.json`` (everything, read back by
:func:`read_collection`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from matchlens.errors import ConfigError
from matchlens.fileio import atomic_path, read_json_object, write_json_atomic, write_text_atomic

__all__ = ["COLOURS", "MODIFICATIONS", "PREDICATES", "POSITIONS", "SHAPES", "SIZES", "Box", "Relation", "Scene",
           "SceneConfig", "SceneObject", "SceneSet", "Triplet", "apply_description", "caption", "geometric_predicate",
           "generate", "read_collection", "render", "scene_graph", "write_collection"]

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in pixels of the rendered image."""

SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder")
#: CLEVR's colours (RGB, 0-255).
COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20),
    "brown": (129, 74, 25), "purple": (129, 38, 192), "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
SIZES: tuple[str, ...] = ("small", "large")
#: The modification kinds of TIRG's CSS set.
MODIFICATIONS: tuple[str, ...] = ("add", "remove", "change")
#: sg2im's geometric predicates, in its order.
PREDICATES: tuple[str, ...] = ("left of", "right of", "above", "below", "inside", "surrounding")
_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")
#: "top-left" … "bottom-right" for the 3 × 3 grid (row-major).
POSITIONS: tuple[str, ...] = tuple(f"{r}-{c}" for r in _ROWS for c in _COLS)
_SIDE = {"small": 0.42, "large": 0.72}  # object side as a fraction of the cell


def _default_held_out() -> tuple[tuple[str, str], ...]:
    # two colours per shape, different for each shape: every colour and every shape still occurs in training
    names = list(COLOURS)
    return tuple((shape, names[(2 * i + k) % len(names)]) for i, shape in enumerate(SHAPES) for k in range(2))


@dataclass(frozen=True)
class SceneConfig:
    """What :func:`generate` draws. Counts are per split; ``mods_per_reference`` triplets (so
    target scenes) are derived from each reference scene."""

    seed: int = 0
    image_size: int = 64
    train_references: int = 200
    test_references: int = 100
    mods_per_reference: int = 4
    min_objects: int = 2
    max_objects: int = 4
    nest_prob: float = 0.15       # chance that a large object gets a small one inside it
    omit_prob: float = 0.15       # chance that an "add" text leaves an attribute out (then it is random)
    jitter: float = 0.08          # position jitter, a fraction of the cell
    noise: float = 4.0            # pixel noise sigma (0-255 scale)
    held_out: tuple[tuple[str, str], ...] = field(default_factory=_default_held_out)

    def __post_init__(self) -> None:
        if self.image_size < 24:
            raise ConfigError(f"scenes: image_size must be >= 24, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= len(POSITIONS):
            raise ConfigError(f"scenes: need 1 <= min_objects <= max_objects <= {len(POSITIONS)}, "
                              f"got {self.min_objects}, {self.max_objects}")
        for name in ("train_references", "test_references", "mods_per_reference"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"scenes: {name} must be >= 0, got {getattr(self, name)}")
        for shape, colour in self.held_out:
            if shape not in SHAPES or colour not in COLOURS:
                raise ConfigError(f"scenes: held-out pair ({shape!r}, {colour!r}) is not a known shape and colour")
        object.__setattr__(self, "held_out", tuple(tuple(p) for p in self.held_out))

    def allowed(self, shape: str, colour: str, split: str) -> bool:
        """Whether (shape, colour) may occur in a scene of ``split`` (held-out pairs: test only)."""
        return split != "train" or (shape, colour) not in self.held_out


@dataclass(frozen=True)
class SceneObject:
    """One object: its attributes, its grid cell (row, col) and its box in pixels."""

    shape: str
    colour: str
    size: str
    cell: tuple[int, int]
    box: Box

    @property
    def position(self) -> str:
        """The cell's name, e.g. ``"top-left"``."""
        return POSITIONS[self.cell[0] * 3 + self.cell[1]]

    def attributes(self) -> tuple[int, int, str, str, str]:
        """(row, col, shape, colour, size): what makes two objects the same for retrieval."""
        return (self.cell[0], self.cell[1], self.shape, self.colour, self.size)


@dataclass(frozen=True)
class Scene:
    """A scene: its id (the image's stem), split, objects and the seed of its rendering."""

    id: str
    split: str
    objects: tuple[SceneObject, ...]
    render_seed: int

    @property
    def file_name(self) -> str:
        """The image's path inside a written collection."""
        return f"images/{self.id}.png"

    def key(self) -> tuple[tuple[int, int, str, str, str], ...]:
        """The scene's content without rendering: equal keys mean a correct retrieval."""
        return tuple(sorted(o.attributes() for o in self.objects))

    def pairs(self) -> set[tuple[str, str]]:
        """The (shape, colour) pairs in the scene."""
        return {(o.shape, o.colour) for o in self.objects}


@dataclass(frozen=True)
class Triplet:
    """A modification: the reference scene, the text and the resulting target scene."""

    reference: str
    text: str
    target: str
    kind: str
    split: str


@dataclass(frozen=True)
class Relation:
    """⟨subject, predicate, object⟩ between two objects of a scene (indices into ``objects``)."""

    subject: int
    predicate: str
    object: int


@dataclass
class SceneSet:
    """Generated scenes and triplets (references and targets of both splits)."""

    config: SceneConfig
    scenes: dict[str, Scene]
    triplets: list[Triplet]

    def split(self, name: str) -> list[Scene]:
        """The scenes of split ``name`` (``train`` or ``test``), in id order."""
        return [s for s in self.scenes.values() if s.split == name]

    def triplets_of(self, name: str) -> list[Triplet]:
        """The triplets of split ``name``."""
        return [t for t in self.triplets if t.split == name]

    def render(self, scene: Scene | str) -> np.ndarray:
        """(S, S, 3) uint8 RGB image of a scene (or its id)."""
        return render(self.scenes[scene] if isinstance(scene, str) else scene, self.config)

    def correct(self, target: str, candidates: Sequence[str]) -> np.ndarray:
        """Boolean mask over ``candidates``: same content as ``target`` (TIRG counts any such image)."""
        key = self.scenes[target].key()
        return np.array([self.scenes[c].key() == key for c in candidates], dtype=bool)


# --------------------------------------------------------------------------------------------- words

def describe(obj: SceneObject, attributes: Iterable[str]) -> str:
    """The phrase naming ``obj`` by ``attributes`` (of position, size, colour, shape), e.g.
    ``"top-left small red object"``; ``"object"`` stands for a shape left out."""
    chosen = set(attributes)
    words = [obj.position] if "position" in chosen else []
    words += [getattr(obj, a) for a in ("size", "colour") if a in chosen]
    words.append(obj.shape if "shape" in chosen else "object")
    return " ".join(words)


def _matches(obj: SceneObject, anchor: SceneObject, attributes: Iterable[str]) -> bool:
    return all(getattr(obj, a) == getattr(anchor, a) for a in attributes)


def apply_description(scene: Scene, anchor: SceneObject, attributes: Iterable[str]) -> list[int]:
    """Indices of the objects of ``scene`` that a description of ``anchor`` by ``attributes`` names."""
    attrs = tuple(attributes)
    return [i for i, o in enumerate(scene.objects) if _matches(o, anchor, attrs)]


def caption(scene: Scene) -> str:
    """One sentence listing the objects row by row, e.g. ``"a large red cube at top-left and a
    small blue sphere inside it"``."""
    ordered = sorted(scene.objects, key=lambda o: (o.cell, o.size != "large"))
    parts: list[str] = []
    for i, obj in enumerate(ordered):
        inside = i > 0 and ordered[i - 1].cell == obj.cell
        parts.append(f"a {obj.size} {obj.colour} {obj.shape} " + ("inside it" if inside else f"at {obj.position}"))
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# --------------------------------------------------------------------------------------------- graph

def geometric_predicate(subject: Box, obj: Box) -> str:
    """sg2im's predicate of ``subject`` relative to ``obj`` from their boxes: ``surrounding`` /
    ``inside`` when one box strictly contains the other, else by the angle between centres."""
    sx0, sy0, sx1, sy1 = subject
    ox0, oy0, ox1, oy1 = obj
    if sx0 < ox0 and sx1 > ox1 and sy0 < oy0 and sy1 > oy1:
        return "surrounding"
    if sx0 > ox0 and sx1 < ox1 and sy0 > oy0 and sy1 < oy1:
        return "inside"
    theta = math.atan2((sy0 + sy1 - oy0 - oy1) / 2, (sx0 + sx1 - ox0 - ox1) / 2)
    if theta >= 3 * math.pi / 4 or theta <= -3 * math.pi / 4:
        return "left of"
    if theta < -math.pi / 4:
        return "above"  # image y grows downwards
    if theta < math.pi / 4:
        return "right of"
    return "below"


def scene_graph(scene: Scene) -> list[Relation]:
    """Every ordered pair of distinct objects with its geometric predicate."""
    return [Relation(i, geometric_predicate(a.box, b.box), j)
            for i, a in enumerate(scene.objects) for j, b in enumerate(scene.objects) if i != j]


# --------------------------------------------------------------------------------------------- drawing

def _object_box(cell: tuple[int, int], size: str, config: SceneConfig, rng: np.random.Generator,
                centre: tuple[float, float] | None = None) -> Box:
    step = config.image_size / 3
    side = _SIDE[size] * step
    if centre is None:
        room = min(config.jitter, (1 - _SIDE["large"]) / 2 - 0.02) * step
        cx, cy = (cell[1] + 0.5) * step + rng.uniform(-room, room), (cell[0] + 0.5) * step + rng.uniform(-room, room)
    else:
        cx, cy = centre
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def _shape_layers(shape: str, u: np.ndarray, v: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mask, unit normal (…, 3)) per face of ``shape`` on local coordinates u, v ∈ [-1, 1] (v down)."""
    ones, zeros = np.ones_like(u), np.zeros_like(u)
    if shape == "sphere":
        r2 = u ** 2 + v ** 2
        return [(r2 <= 1, np.stack([u, v, np.sqrt(np.clip(1 - r2, 0, 1))], -1))]
    if shape == "cube":  # front square, top and right faces of a cube seen slightly from above-right
        t, s = (-0.5 - v) / 0.5, (u - 0.5) / 0.5
        front = (u >= -1) & (u <= 0.5) & (v >= -0.5) & (v <= 1)
        top = (v >= -1) & (v < -0.5) & (u >= -1 + 0.5 * t) & (u <= 0.5 + 0.5 * t)
        right = (u > 0.5) & (u <= 1) & (v >= -0.5 - 0.5 * s) & (v <= 1 - 0.5 * s)
        return [(front, np.stack([zeros, zeros, ones], -1)), (top, np.stack([zeros, -ones, ones * 0.3], -1)),
                (right, np.stack([ones, zeros, ones * 0.3], -1))]
    # cylinder: a curved body and an elliptical top
    a = np.clip(u / 0.8, -1, 1)
    body = (np.abs(u) <= 0.8) & (v >= -0.7) & ((v <= 0.75) | ((u / 0.8) ** 2 + ((v - 0.75) / 0.25) ** 2 <= 1))
    top = (u / 0.8) ** 2 + ((v + 0.7) / 0.25) ** 2 <= 1
    return [(body & ~top, np.stack([a, zeros, np.sqrt(1 - a ** 2)], -1)), (top, np.stack([zeros, -ones, ones * 0.3], -1))]


def _draw(canvas: np.ndarray, obj: SceneObject, scale: int, light: np.ndarray) -> None:
    x0, y0, x1, y1 = (round(c * scale) for c in obj.box)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, canvas.shape[1]), min(y1, canvas.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    bx0, by0, bx1, by1 = (c * scale for c in obj.box)
    xs = ((np.arange(x0, x1) + 0.5) - (bx0 + bx1) / 2) / ((bx1 - bx0) / 2)
    ys = ((np.arange(y0, y1) + 0.5) - (by0 + by1) / 2) / ((by1 - by0) / 2)
    u, v = np.meshgrid(xs, ys)
    colour = np.asarray(COLOURS[obj.colour], dtype=np.float32) / 255
    patch = canvas[y0:y1, x0:x1]
    half = light + np.array([0, 0, 1.0])
    half /= np.linalg.norm(half)
    for mask, normal in _shape_layers(obj.shape, u, v):
        normal = normal / np.linalg.norm(normal, axis=-1, keepdims=True)
        diffuse = np.clip(normal @ light, 0, None)[..., None]
        spec = np.clip(normal @ half, 0, None)[..., None] ** 24 * 0.35
        shaded = np.clip(colour * (0.35 + 0.75 * diffuse) + spec, 0, 1)
        patch[mask] = shaded[mask]


def render(scene: Scene, config: SceneConfig, supersample: int = 2) -> np.ndarray:
    """(S, S, 3) uint8 RGB rendering of ``scene``: background gradient, shaded objects (large ones
    first), drawn at ``supersample`` × the size and averaged down, then pixel noise."""
    rng = np.random.default_rng(scene.render_seed)
    size = config.image_size * supersample
    azimuth = rng.uniform(-math.pi, 0)  # light from somewhere above
    light = np.array([math.cos(azimuth) * 0.6, math.sin(azimuth) * 0.6, 0.8])
    light /= np.linalg.norm(light)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    gx, gy = np.meshgrid(ramp, ramp)
    base = rng.uniform(0.62, 0.74) + 0.08 * (gx * light[0] + gy * light[1])
    tint = rng.uniform(-0.03, 0.03, 3).astype(np.float32)
    canvas = np.clip(base[..., None] + tint, 0, 1).astype(np.float32)
    for obj in sorted(scene.objects, key=lambda o: o.size != "large"):
        _draw(canvas, obj, supersample, light)
    image = cv2.resize(canvas, (config.image_size, config.image_size), interpolation=cv2.INTER_AREA) * 255
    image += rng.normal(0, config.noise, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- generation

class _Generator:
    """Draws scenes and modifications for one config with one random stream."""

    def __init__(self, config: SceneConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.scenes: dict[str, Scene] = {}
        self.counts = {"train": 0, "test": 0}

    def _pick(self, options: Sequence[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def _pair(self, split: str, avoid_colour: str | None = None) -> tuple[str, str]:
        pairs = [(s, c) for s in SHAPES for c in COLOURS if self.config.allowed(s, c, split) and c != avoid_colour]
        return self._pick(pairs)

    def new_scene(self, split: str, objects: Sequence[SceneObject]) -> Scene:
        """Register a scene with a fresh id and rendering seed."""
        scene_id = f"{split}-{self.counts[split]:05d}"
        self.counts[split] += 1
        scene = Scene(scene_id, split, tuple(objects), int(self.rng.integers(2 ** 31)))
        self.scenes[scene_id] = scene
        return scene

    def new_object(self, split: str, cell: tuple[int, int], size: str | None = None,
                   pair: tuple[str, str] | None = None) -> SceneObject:
        """A random object in ``cell`` (its attributes drawn unless given)."""
        shape, colour = pair or self._pair(split)
        size = size or self._pick(SIZES)
        return SceneObject(shape, colour, size, cell, _object_box(cell, size, self.config, self.rng))

    def reference(self, split: str) -> Scene:
        """A random scene: distinct cells, some large objects with a small one inside."""
        count = int(self.rng.integers(self.config.min_objects, self.config.max_objects + 1))
        cells = self.rng.permutation(len(POSITIONS))[:count]
        objects: list[SceneObject] = []
        for c in cells:
            obj = self.new_object(split, (int(c) // 3, int(c) % 3))
            objects.append(obj)
            if obj.size == "large" and self.rng.random() < self.config.nest_prob:
                objects.append(self.nested(split, obj))
        return self.new_scene(split, objects)

    def nested(self, split: str, outer: SceneObject) -> SceneObject:
        """A small object inside ``outer`` (another colour, so it stays visible)."""
        pair = self._pair(split, avoid_colour=outer.colour)
        step = self.config.image_size / 3
        room = ((_SIDE["large"] - _SIDE["small"]) / 2 - 0.04) * step
        cx, cy = (outer.box[0] + outer.box[2]) / 2, (outer.box[1] + outer.box[3]) / 2
        centre = (cx + self.rng.uniform(-room, room), cy + self.rng.uniform(-room, room))
        return SceneObject(pair[0], pair[1], "small", outer.cell, _object_box(outer.cell, "small", self.config,
                                                                                  self.rng, centre))

    def _description(self, scene: Scene) -> tuple[SceneObject, tuple[str, ...], list[int]]:
        anchor = self._pick(scene.objects)
        names = ("position", "size", "colour", "shape")
        chosen = tuple(a for a in names if self.rng.random() < 0.5) or (self._pick(names),)
        return anchor, chosen, apply_description(scene, anchor, chosen)

    def add(self, scene: Scene) -> tuple[str, list[SceneObject]] | None:
        """TIRG's "add object": a new object in an empty cell; omitted attributes are random."""
        free = sorted(set(range(len(POSITIONS))) - {o.cell[0] * 3 + o.cell[1] for o in scene.objects})
        if not free or len({o.cell for o in scene.objects}) >= self.config.max_objects:
            return None
        c = int(self._pick(free))
        obj = self.new_object(scene.split, (c // 3, c % 3))
        said = [a for a in ("size", "colour", "shape", "position") if self.rng.random() >= self.config.omit_prob]
        text = "add " + describe(obj, [a for a in said if a != "position"])
        if "position" in said:
            text += f" to {obj.position}"
        return text, [*scene.objects, obj]

    def remove(self, scene: Scene) -> tuple[str, list[SceneObject]] | None:
        """TIRG's "remove object": every object the description names goes; one must stay."""
        anchor, chosen, hit = self._description(scene)
        kept = [o for i, o in enumerate(scene.objects) if i not in hit]
        if not kept:
            return None
        return "remove " + describe(anchor, chosen), kept

    def change(self, scene: Scene) -> tuple[str, list[SceneObject]] | None:
        """TIRG's "change object": every named object gets a new colour or size."""
        anchor, chosen, hit = self._description(scene)
        targets = [scene.objects[i] for i in hit]
        if self.rng.random() < 0.5:
            # a new colour differs from every named object and from any object sharing its cell (kept visible)
            near = {p.colour for o in targets for p in scene.objects if p.cell == o.cell}
            colours = [c for c in COLOURS if c not in near and all(self.config.allowed(o.shape, c, scene.split)
                                                                  for o in targets)]
            if not colours:
                return None
            value = self._pick(colours)
            changed = {i: replace(scene.objects[i], colour=value) for i in hit}
        else:
            shared = [o for o in targets if sum(p.cell == o.cell for p in scene.objects) > 1]
            value = "large" if anchor.size == "small" else "small"
            if shared:
                return None  # a nested pair keeps its sizes (a large object cannot sit inside another)
            changed = {i: self._resized(scene.objects[i], value) for i in hit}
        if all(changed[i] == scene.objects[i] for i in hit):
            return None
        return f"make {describe(anchor, chosen)} {value}", [changed.get(i, o) for i, o in enumerate(scene.objects)]

    def _resized(self, obj: SceneObject, size: str) -> SceneObject:
        centre = ((obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2)
        return replace(obj, size=size, box=_object_box(obj.cell, size, self.config, self.rng, centre))

    def modify(self, scene: Scene, require_held_out: bool) -> Triplet | None:
        """One triplet from ``scene`` (None when the drawn modification does not apply)."""
        kind = self._pick(MODIFICATIONS)
        made = {"add": self.add, "remove": self.remove, "change": self.change}[kind](scene)
        if made is None:
            return None
        text, objects = made
        held = set(self.config.held_out)
        if require_held_out and not (scene.pairs() | {(o.shape, o.colour) for o in objects}) & held:
            return None
        target = self.new_scene(scene.split, objects)
        return Triplet(scene.id, text, target.id, kind, scene.split)


def generate(config: SceneConfig | None = None, progress: Callable[[int], None] | None = None) -> SceneSet:
    """Reference scenes and ``mods_per_reference`` triplets each, for both splits (deterministic
    for ``config.seed``). Test triplets all involve a held-out (shape, colour) pair; ``progress``
    is called with the number of references done."""
    config = config or SceneConfig()
    gen = _Generator(config)
    triplets: list[Triplet] = []
    for split, count in (("train", config.train_references), ("test", config.test_references)):
        done = 0
        while done < count:
            reference = gen.reference(split)
            made = _modifications(gen, reference, require_held_out=split == "test")
            if made is None:  # a test reference that cannot reach a held-out pair: draw another
                del gen.scenes[reference.id]
                gen.counts[split] -= 1
                continue
            triplets += made
            done += 1
            if progress:
                progress(1)
    return SceneSet(config, gen.scenes, triplets)


def _modifications(gen: _Generator, reference: Scene, require_held_out: bool) -> list[Triplet] | None:
    made: list[Triplet] = []
    for _ in range(40 * max(gen.config.mods_per_reference, 1)):
        if len(made) == gen.config.mods_per_reference:
            return made
        triplet = gen.modify(reference, require_held_out)
        if triplet is not None:
            made.append(triplet)
    if made or gen.config.mods_per_reference == 0:
        return made
    return None


# --------------------------------------------------------------------------------------------- files

def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def coco_annotations(scene_set: SceneSet) -> dict[str, Any]:
    """The set as a COCO detection JSON: one category per shape, a box ``[x, y, w, h]`` per object
    (with its ``colour``, ``size`` and ``position``), ``split`` and ``caption`` per image."""
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for number, scene in enumerate(scene_set.scenes.values(), start=1):
        size = scene_set.config.image_size
        images.append({"id": number, "file_name": scene.file_name, "width": size, "height": size,
                       "split": scene.split, "scene": scene.id, "caption": caption(scene)})
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": SHAPES.index(obj.shape) + 1,
                                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                                "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0,
                                "colour": obj.colour, "size": obj.size, "position": obj.position})
    return {"info": {"description": "matchlens generated CSS-like scenes", "seed": scene_set.config.seed,
                     "held_out": [list(p) for p in scene_set.config.held_out]},
            "images": images, "annotations": annotations, "categories": categories}


def write_collection(scene_set: SceneSet, folder: str | Path, progress: Callable[[int], None] | None = None) -> Path:
    """Write ``images/<id>.png``, ``annotations.json`` (COCO), ``captions.csv`` (image, caption,
    split), ``triplets.csv`` (reference, text, target, kind, split; image paths relative to
    ``folder``) and ``scenes.json`` into ``folder``; returns ``folder``."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for scene in scene_set.scenes.values():
        with atomic_path(folder / scene.file_name, suffix=".tmp.png") as tmp:
            if not cv2.imwrite(str(tmp), cv2.cvtColor(scene_set.render(scene), cv2.COLOR_RGB2BGR)):
                raise ConfigError(f"cannot write {folder / scene.file_name}")
        if progress:
            progress(1)
    scenes = scene_set.scenes
    write_json_atomic(folder / "annotations.json", coco_annotations(scene_set))
    write_text_atomic(folder / "captions.csv", _csv_text(("image", "caption", "split"), (
        (s.file_name, caption(s), s.split) for s in scenes.values())))
    write_text_atomic(folder / "triplets.csv", _csv_text(("reference", "text", "target", "kind", "split"), (
        (scenes[t.reference].file_name, t.text, scenes[t.target].file_name, t.kind, t.split) for t in scene_set.triplets)))
    write_json_atomic(folder / "scenes.json", {"config": asdict(scene_set.config),
                                               "scenes": [asdict(s) for s in scenes.values()],
                                               "triplets": [asdict(t) for t in scene_set.triplets]})
    return folder


def read_collection(folder: str | Path) -> SceneSet:
    """The :class:`SceneSet` that :func:`write_collection` wrote into ``folder`` (from ``scenes.json``)."""
    data = read_json_object(Path(folder) / "scenes.json", "scene file", ConfigError,
                            "with 'config', 'scenes' and 'triplets' (written by matchlens' scene generator)")
    try:
        config = SceneConfig(**{**data["config"], "held_out": tuple(tuple(p) for p in data["config"]["held_out"])})
        scenes = {}
        for s in data["scenes"]:
            objects = tuple(SceneObject(o["shape"], o["colour"], o["size"], tuple(o["cell"]), tuple(o["box"]))
                            for o in s["objects"])
            scenes[s["id"]] = Scene(s["id"], s["split"], objects, int(s["render_seed"]))
        triplets = [Triplet(**t) for t in data["triplets"]]
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{Path(folder) / 'scenes.json'} is not a scene file: {exc}") from None
    return SceneSet(config, scenes, triplets)
