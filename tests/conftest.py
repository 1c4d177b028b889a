"""Shared fixtures: small generated photos-like scenes, a small fast pipeline, the shared data."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from matchlens.config import PipelineSpec

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def require_module(name: str):
    """Import ``name`` for a test module; skip where it is not installed, except under CI
    (``MATCHLENS_REQUIRE_ALL=1``, set by .ci/run), where every pinned extra must be there and a
    missing one fails instead of silently skipping its tests."""
    if os.environ.get("MATCHLENS_REQUIRE_ALL") == "1":
        import importlib

        return importlib.import_module(name)
    return pytest.importorskip(name)


def make_scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A distinctive synthetic 'photo': smooth coloured noise with random shapes on it."""
    rng = np.random.default_rng(seed)
    w, h = size
    low = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        x1, y1 = x0 + rng.integers(15, w // 2), y0 + rng.integers(15, h // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0), width=3)
    return img.filter(ImageFilter.SMOOTH)


def texture_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blurred noise with random rectangles: many distinct SIFT keypoints."""
    image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3)).astype(np.uint8), (0, 0), 2.0)
    for _ in range(40):
        x, y = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        w, h = int(rng.integers(5, 30)), int(rng.integers(5, 30))
        cv2.rectangle(image, (x, y), (x + w, y + h), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    return image


def paste_patch(background: np.ndarray, patch: np.ndarray, x: int, y: int) -> np.ndarray:
    """``background`` with ``patch`` pasted at (x, y)."""
    out = background.copy()
    out[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
    return out


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run the ``matchlens`` CLI in-process; returns (exit code, stdout, stderr)."""
    from matchlens.cli import main

    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory) -> Path:
    """A folder of 10 distinct JPEG scenes named scene_00.jpg ... scene_09.jpg."""
    folder = tmp_path_factory.mktemp("scenes")
    for i in range(10):
        make_scene(i).save(folder / f"scene_{i:02d}.jpg", quality=92)
    return folder


@pytest.fixture(scope="session")
def small_spec() -> PipelineSpec:
    """The embedded backbone at 128 px: the real pipeline, fast enough for unit tests."""
    return PipelineSpec(max_side=128)


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, scenes_dir, small_spec):
    """An index of ``scenes_dir`` (session-wide: tests must not modify it)."""
    import matchlens

    return matchlens.build_index(scenes_dir, tmp_path_factory.mktemp("idx") / "index", spec=small_spec)


@pytest.fixture(scope="session")
def verifier(tmp_path_factory, scenes_dir) -> Path:
    """A tiny indicative verifier (4x4 grid, 6 px patches) trained label-free on the scenes
    through the CLI: one epoch on 24 pairs, on one thread."""
    import torch

    from matchlens.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("verifier") / "v.pt"
    try:
        main(["train-verifier", str(scenes_dir), "--out", str(path), "--pairs", "24", "--epochs", "1",
              "--grid", "4x4", "--patch-px", "6", "--metrics", "cosine,euclidean,mahalanobis", "-q"])
    except SystemExit as exc:
        assert not exc.code
    finally:
        torch.set_num_threads(before)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared evaluation data (../shared/data beside the repo); skipped where absent."""
    if not (SHARED_DATA / "oxford5k_subset" / "gt.json").is_file():
        pytest.skip("../shared/data is not present beside the repository")
    return SHARED_DATA
