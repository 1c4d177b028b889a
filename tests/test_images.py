"""Tests for matchlens.io.images: every image is generated in tmp_path, none is shipped."""

from __future__ import annotations

import os
import struct
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFile

from matchlens.errors import BoxError, ImageLoadError, MatchlensError
from matchlens.io import images
from matchlens.io.images import MAX_PIXELS, crop_to_box, image_size, load_image, parse_box

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


# --------------------------------------------------------------------------------------------
# Helpers


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def _noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """Incompressible content, so a file cut in half really loses pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose header declares ``width`` x ``height`` 8-bit grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00\x00"))
        + _png_chunk(b"IEND", b"")
    )


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any attempt to decode pixels from a file (the bomb tests forbid it)."""
    attempts: list[str] = []

    def refuse_to_decode(self: ImageFile.ImageFile) -> None:
        attempts.append(f"{self.format} {self.size}")
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse_to_decode)
    return attempts


# --------------------------------------------------------------------------------------------
# Unreadable paths


def test_missing_path_says_no_such_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageLoadError, match=r"^cannot read '.*missing\.jpg': no such file$"):
        load_image(missing)


def test_directory_says_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"is a directory$") as caught:
        load_image(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_zero_byte_file_says_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"^cannot read '.*empty\.png': empty file$"):
        load_image(empty)


def test_text_file_with_jpg_name_is_not_an_image(tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is a shopping list, not a photo\n")
    with pytest.raises(
        ImageLoadError, match=r"^cannot read '.*notes\.jpg': not an image \(unrecognised format\)$"
    ):
        load_image(fake)


def test_unreadable_file_says_permission_denied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = _save(Image.new("RGB", (4, 4)), tmp_path / "locked.png")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root ignores file modes; make opening fail as it would
        real_open = os.open

        def deny(path: object, flags: int, *args: object, **kwargs: object) -> int:
            if os.fspath(path) == str(locked):  # type: ignore[arg-type]
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(images.os, "open", deny)
    with pytest.raises(ImageLoadError, match=r"^cannot read '.*locked\.png': permission denied$"):
        load_image(locked)


@pytest.mark.parametrize("suffix, options", [(".jpg", {"quality": 90}), (".png", {})])
def test_truncated_file_says_truncated_or_corrupt(
    tmp_path: Path, suffix: str, options: dict[str, object]
) -> None:
    whole = _save(_noise_rgb(128, 128), tmp_path / f"whole{suffix}", **options).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageLoadError, match=r"file is truncated or corrupt") as caught:
        load_image(cut)
    assert f"'{cut}'" in str(caught.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_errors_are_matchlens_errors_with_one_line_messages(tmp_path: Path) -> None:
    fake = tmp_path / "two\nlines.jpg"
    fake.write_text("not an image")
    with pytest.raises(MatchlensError) as caught:
        load_image(fake)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# Pixel modes


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_on_white(tmp_path: Path, mode: str) -> None:
    colour = (10, 20, 30) if mode == "RGBA" else (90,)
    rgba = Image.new(mode, (3, 1))
    rgba.putpixel((0, 0), (*colour, 0))  # fully transparent
    rgba.putpixel((1, 0), (*colour, 255))  # opaque
    rgba.putpixel((2, 0), (0,) * len(colour) + (128,))  # half-transparent black
    loaded = load_image(_save(rgba, tmp_path / "alpha.png"))
    assert loaded.mode == "RGB"
    opaque = colour if mode == "RGBA" else colour * 3
    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((1, 0)) == opaque
    assert loaded.getpixel((2, 0)) == (127, 127, 127)


def test_16_bit_grayscale_png_is_scaled_to_8_bits(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65280, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as stored:
        assert stored.mode.startswith("I;16")  # the file really is 16-bit
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert _pixels(loaded)[0, :, 0].tolist() == [0, 1, 128, 254, 255]
    assert np.array_equal(_pixels(loaded)[..., 0], _pixels(loaded)[..., 2])


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    path = _save(cmyk, tmp_path / "print.jpg", quality=95)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    red, green, blue = loaded.getpixel((8, 8))
    assert red > 230 and green < 25 and blue < 25


def _palette_image() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([200, 10, 20, 30, 40, 250] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    return image


def test_palette_png_without_transparency_keeps_colours(tmp_path: Path) -> None:
    loaded = load_image(_save(_palette_image(), tmp_path / "palette.png"))
    assert loaded.mode == "RGB"
    assert [loaded.getpixel((0, 0)), loaded.getpixel((1, 0))] == [(200, 10, 20), (30, 40, 250)]


def test_palette_png_with_transparency_composites_on_white(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "palette_t.png", transparency=1)
    loaded = load_image(path)
    assert [loaded.getpixel((0, 0)), loaded.getpixel((1, 0))] == [(200, 10, 20), WHITE]


def test_rgb_png_with_a_transparent_colour_composites_it_on_white(tmp_path: Path) -> None:
    image = Image.new("RGB", (2, 1), (1, 2, 3))
    image.putpixel((1, 0), (9, 8, 7))
    loaded = load_image(_save(image, tmp_path / "trns.png", transparency=(1, 2, 3)))
    assert [loaded.getpixel((0, 0)), loaded.getpixel((1, 0))] == [WHITE, (9, 8, 7)]


@pytest.mark.parametrize("mode, value, expected", [("L", 77, (77,) * 3), ("1", 1, WHITE)])
def test_single_channel_images_become_grey_rgb(
    tmp_path: Path, mode: str, value: int, expected: tuple[int, int, int]
) -> None:
    loaded = load_image(_save(Image.new(mode, (3, 2), value), tmp_path / f"{mode}.png"))
    assert loaded.mode == "RGB" and loaded.size == (3, 2)
    assert loaded.getpixel((2, 1)) == expected


def test_32_bit_int_image_is_scaled_by_its_maximum_with_negatives_clipped() -> None:
    values = np.array([[-5, 0, 1000, 2000]], dtype=np.int32)
    loaded = load_image(Image.fromarray(values))
    assert _pixels(loaded)[0, :, 0].tolist() == [0, 0, 128, 255]


def test_float_image_is_scaled_by_its_maximum() -> None:
    values = np.array([[0.0, 0.25, 0.5]], dtype=np.float32)
    loaded = load_image(Image.fromarray(values))
    assert _pixels(loaded)[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("suffix", [".gif", ".tiff"])
def test_multi_frame_files_give_their_first_frame(tmp_path: Path, suffix: str) -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    path = _save(frames[0], tmp_path / f"anim{suffix}", save_all=True, append_images=frames[1:])
    with Image.open(path) as stored:
        assert getattr(stored, "n_frames", 1) == 2
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((4, 4)) == RED


# --------------------------------------------------------------------------------------------
# Orientation, size and independence


def _left_red_right_blue(width: int = 40, height: int = 20) -> Image.Image:
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


def test_exif_orientation_6_comes_back_upright(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(_left_red_right_blue(), tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    top, bottom = np.asarray(loaded)[:15].reshape(-1, 3), np.asarray(loaded)[25:].reshape(-1, 3)
    assert np.all(top[:, 0] > 200) and np.all(top[:, 2] < 50)  # red on top
    assert np.all(bottom[:, 2] > 200) and np.all(bottom[:, 0] < 50)  # blue below
    assert image_size(path) == (20, 40)


def test_image_size_reads_the_header_only(tmp_path: Path, no_decoding: list[str]) -> None:
    path = _save(Image.new("RGB", (31, 17)), tmp_path / "plain.png")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(100_000, 100_000))
    assert image_size(path) == (31, 17)
    assert image_size(bomb) == (100_000, 100_000)
    assert no_decoding == []


def test_image_size_reports_unreadable_files(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("nope")
    with pytest.raises(ImageLoadError, match="not an image"):
        image_size(fake)
    with pytest.raises(ImageLoadError, match="no such file"):
        image_size(tmp_path / "missing.png")


def test_unicode_and_space_file_names(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (5, 3), (1, 2, 3)), tmp_path / "Café über 東京 photo.png")
    loaded = load_image(path)
    assert loaded.size == (5, 3) and loaded.getpixel((4, 2)) == (1, 2, 3)
    assert image_size(str(path)) == (5, 3)
    with pytest.raises(ImageLoadError, match="Café über 東京 missing.png"):
        load_image(tmp_path / "Café über 東京 missing.png")


def test_result_is_fully_loaded_and_outlives_its_file(tmp_path: Path) -> None:
    path = _save(_noise_rgb(16, 16), tmp_path / "gone.png")
    with Image.open(path) as stored:
        expected = np.asarray(stored.convert("RGB"))
    loaded = load_image(path)
    path.unlink()
    assert not isinstance(loaded, ImageFile.ImageFile)
    assert np.array_equal(np.asarray(loaded), expected)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count fds")
def test_no_file_descriptors_leak(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    gif = _save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    jpeg = _save(_noise_rgb(64, 64), tmp_path / "ok.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(jpeg[: len(jpeg) // 2])
    fake = tmp_path / "fake.jpg"
    fake.write_text("text")
    before = _open_fds()
    for _ in range(5):
        load_image(gif)
        image_size(gif)
        for bad in (cut, fake):
            with pytest.raises(ImageLoadError):
                load_image(bad)
    assert _open_fds() == before


# --------------------------------------------------------------------------------------------
# Decompression bombs and max_side


def test_decompression_bomb_is_refused_from_the_header(
    tmp_path: Path, no_decoding: list[str]
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(100_000, 100_000))
    pillow_limit = Image.MAX_IMAGE_PIXELS
    started = time.perf_counter()
    with pytest.raises(ImageLoadError, match=r"10000000000 pixels.*limit of 536870912") as caught:
        load_image(bomb)
    assert time.perf_counter() - started < 1.0
    assert no_decoding == []
    assert "bomb.png" in str(caught.value)
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's global is put back


def test_decompression_bomb_in_bytes_is_refused(no_decoding: list[str]) -> None:
    with pytest.raises(ImageLoadError, match=r"^cannot read in-memory image bytes: .*10000000000"):
        load_image(_bomb_png(100_000, 100_000))
    assert no_decoding == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("max_pixels", [4000, 2000])  # within Pillow's warning band, and past it
def test_custom_pixel_limit_gives_both_numbers(tmp_path: Path, max_pixels: int) -> None:
    path = _save(Image.new("RGB", (64, 64)), tmp_path / "small.png")
    with pytest.raises(ImageLoadError, match=rf"4096 pixels, over the limit of {max_pixels}\b"):
        load_image(path, max_pixels=max_pixels)
    assert load_image(path, max_pixels=4096).size == (64, 64)


def test_images_under_our_limit_ignore_pillows_smaller_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 is over twice this
    path = _save(Image.new("RGB", (64, 64), RED), tmp_path / "fine.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(path)
        cropped = crop_to_box(loaded, (0, 0, 64, 64))
    assert loaded.size == cropped.size == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_pillow_limit_is_restored_after_concurrent_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    paths = [_save(_noise_rgb(48, 48, seed), tmp_path / f"{seed}.png") for seed in range(8)]
    barrier = threading.Barrier(4)

    def load_all(offset: int) -> list[tuple[int, int]]:
        barrier.wait()
        return [load_image(paths[(offset + k) % 8]).size for k in range(16)]

    with ThreadPoolExecutor(4) as pool:
        sizes = [size for batch in pool.map(load_all, range(4)) for size in batch]
    assert sizes == [(48, 48)] * 64
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_huge_jpeg_is_decoded_cheaply_with_max_side(tmp_path: Path) -> None:
    # 400 MP: over Pillow's own default limit, under ours. A gradient keeps the file small.
    huge = Image.linear_gradient("L").resize((20_000, 20_000), Image.Resampling.NEAREST)
    path = _save(huge, tmp_path / "huge.jpg", quality=75)
    del huge
    started = time.perf_counter()
    loaded = load_image(path, max_side=1024)
    assert time.perf_counter() - started < 10
    assert loaded.mode == "RGB"
    assert 1024 <= max(loaded.size) <= 2500
    assert image_size(path) == (20_000, 20_000)


@pytest.mark.parametrize(
    "size, max_side, expected",
    [
        ((800, 600), 100, (100, 75)),
        ((800, 600), 101, (200, 150)),
        ((800, 600), 300, (400, 300)),
        ((800, 600), 401, (800, 600)),
        ((800, 600), 5000, (800, 600)),
        ((801, 601), 101, (101, 76)),  # ceil(801 / 8) == 101 is still long enough
        ((600, 801), 101, (75, 101)),  # portrait: the longest side decides
    ],
)
def test_max_side_picks_the_coarsest_jpeg_scale_that_is_big_enough(
    tmp_path: Path, size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    path = _save(_noise_rgb(*size), tmp_path / "photo.jpg")
    assert load_image(path, max_side=max_side).size == expected


def test_max_side_does_not_resize_other_formats(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (80, 60)), tmp_path / "photo.png")
    assert load_image(path, max_side=10).size == (80, 60)


def test_max_side_applies_to_jpeg_bytes_too(tmp_path: Path) -> None:
    data = _save(_noise_rgb(800, 600), tmp_path / "photo.jpg").read_bytes()
    assert load_image(data, max_side=100).size == (100, 75)


@pytest.mark.parametrize("options", [{"max_side": 0}, {"max_pixels": 0}])
def test_nonsensical_limits_are_programming_errors(options: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be a positive integer"):
        load_image(np.zeros((2, 2), np.uint8), **options)


# --------------------------------------------------------------------------------------------
# In-memory sources


def test_bytes_input_decodes_like_a_file(tmp_path: Path) -> None:
    data = _save(_left_red_right_blue(), tmp_path / "x.png").read_bytes()
    loaded = load_image(data)
    assert loaded.size == (40, 20)
    assert loaded.getpixel((0, 0)) == RED and loaded.getpixel((39, 19)) == BLUE
    assert load_image(bytearray(data)).getpixel((0, 0)) == RED


@pytest.mark.parametrize(
    "data, problem",
    [(b"", "empty buffer"), (b"GIF? no, just text", r"not an image \(unrecognised format\)")],
)
def test_bad_bytes_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(ImageLoadError, match=rf"^cannot read in-memory image bytes: {problem}$"):
        load_image(data)


def test_truncated_bytes_are_refused(tmp_path: Path) -> None:
    data = _save(_noise_rgb(64, 64), tmp_path / "x.jpg").read_bytes()
    with pytest.raises(ImageLoadError, match="in-memory image bytes: file is truncated"):
        load_image(data[: len(data) // 2])


def test_pil_input_is_converted_without_touching_the_callers_image() -> None:
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    loaded = load_image(rgba)
    assert loaded is not rgba and rgba.mode == "RGBA"
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == WHITE
    rgb = Image.new("RGB", (2, 1), RED)
    copy = load_image(rgb)
    copy.putpixel((0, 0), BLUE)
    assert rgb.getpixel((0, 0)) == RED


def test_lazy_pil_input_is_decoded_and_checked(tmp_path: Path, no_decoding: list[str]) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(3000, 3000))
    with Image.open(bomb) as lazy, pytest.raises(ImageLoadError, match=r"'.*bomb\.png'.*9000000"):
        load_image(lazy, max_pixels=1_000_000)
    assert no_decoding == []


def test_truncated_lazy_pil_input_is_reported(tmp_path: Path) -> None:
    data = _save(_noise_rgb(64, 64), tmp_path / "x.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with Image.open(cut) as lazy, pytest.raises(ImageLoadError, match=r"'.*cut\.jpg'.*truncated"):
        load_image(lazy)


def test_empty_pil_image_is_refused() -> None:
    with pytest.raises(ImageLoadError, match=r"in-memory image: it has no pixels \(0x5\)"):
        load_image(Image.new("RGB", (0, 5)))


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((2, 3), 7, np.uint8), (7, 7, 7)),
        (np.full((2, 3, 1), 7, np.uint8), (7, 7, 7)),
        (np.tile(np.array([1, 2, 3], np.uint8), (2, 3, 1)), (1, 2, 3)),
        (np.tile(np.array([1, 2, 3, 255], np.uint8), (2, 3, 1)), (1, 2, 3)),
        (np.tile(np.array([1, 2, 3, 0], np.uint8), (2, 3, 1)), WHITE),
        (np.full((2, 3), 32896, np.uint16), (128, 128, 128)),
        (np.full((2, 3, 3), 65535, np.uint16), WHITE),
        (np.ones((2, 3), bool), WHITE),
        (np.zeros((2, 3), bool), (0, 0, 0)),
        (np.full((2, 3, 3), 0.5, np.float32), (128, 128, 128)),
        (np.full((2, 3), 1.0, np.float64), WHITE),
    ],
    ids=lambda value: f"{value.shape}-{value.dtype}" if isinstance(value, np.ndarray) else "",
)
def test_numpy_inputs(array: np.ndarray, expected: tuple[int, int, int]) -> None:
    loaded = load_image(array)
    assert loaded.mode == "RGB" and loaded.size == (3, 2)
    assert set(map(tuple, np.asarray(loaded).reshape(-1, 3).tolist())) == {expected}


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4, 4, 5), np.uint8),
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros(4, np.uint8),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((4, 4), np.int32),
        np.zeros((4, 4), np.complex64),
    ],
    ids=lambda value: f"{value.shape}-{value.dtype}",
)
def test_unsupported_arrays_name_their_shape_and_dtype(array: np.ndarray) -> None:
    with pytest.raises(ImageLoadError) as caught:
        load_image(array)
    assert str(array.shape) in str(caught.value) and str(array.dtype) in str(caught.value)


@pytest.mark.parametrize("bad_value", [1.5, -0.1, float("nan")])
def test_float_arrays_outside_unit_range_are_refused(bad_value: float) -> None:
    array = np.zeros((2, 2, 3), np.float32)
    array[1, 1, 1] = bad_value
    with pytest.raises(ImageLoadError, match=r"shape \(2, 2, 3\) and dtype float32.*\[0, 1\]"):
        load_image(array)


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 3), (4, 5, 4)])
def test_array_result_does_not_share_memory_with_the_array(shape: tuple[int, ...]) -> None:
    array = np.full(shape, 255, np.uint8)
    loaded = load_image(array)
    array[...] = 0
    assert loaded.getpixel((0, 0)) == WHITE


def test_unsupported_source_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="list"):
        load_image([[0, 0], [0, 0]])  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
        lambda size: arrays(np.uint8, (*size, 3))
    )
)
def test_rgb_arrays_round_trip_exactly(array: np.ndarray) -> None:
    loaded = load_image(array)
    assert loaded.mode == "RGB"
    assert np.array_equal(np.asarray(loaded), array)


# --------------------------------------------------------------------------------------------
# Boxes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10,20,30,40", (10.0, 20.0, 30.0, 40.0)),
        (" 1.5 , 2 ,3.25, 4e1 ", (1.5, 2.0, 3.25, 40.0)),
        ("-5,-5,10,10", (-5.0, -5.0, 10.0, 10.0)),
    ],
)
def test_parse_box_accepts_four_ordered_numbers(
    text: str, expected: tuple[float, float, float, float]
) -> None:
    assert parse_box(text) == expected


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "expected four comma-separated numbers"),
        ("1,2,3", "expected four comma-separated numbers"),
        ("1,2,3,4,5", "expected four comma-separated numbers"),
        ("a,b,c,d", "expected four comma-separated numbers"),
        ("1 2 3 4", "expected four comma-separated numbers"),
        ("nan,0,1,1", "finite"),
        ("0,0,inf,1", "finite"),
        ("5,0,5,10", r"x1 \(5\) must be greater than x0 \(5\)"),
        ("6,0,5,10", r"x1 \(5\) must be greater than x0 \(6\)"),
        ("0,9,5,3", r"y1 \(3\) must be greater than y0 \(9\)"),
    ],
)
def test_parse_box_rejects_malformed_boxes(text: str, problem: str) -> None:
    with pytest.raises(BoxError, match=rf"^invalid box '{text}': .*{problem}"):
        parse_box(text)


@pytest.fixture
def gradient() -> Image.Image:
    """100x80 image whose pixel (x, y) is (x, y, 0): crops can be checked by value."""
    ys, xs = np.mgrid[0:80, 0:100]
    return Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8))


def test_crop_inside_the_image(gradient: Image.Image) -> None:
    cropped = crop_to_box(gradient, (10, 20, 30, 50))
    assert cropped.size == (20, 30)
    assert cropped.getpixel((0, 0)) == (10, 20, 0) and cropped.getpixel((19, 29)) == (29, 49, 0)


def test_crop_keeps_partly_covered_pixels(gradient: Image.Image) -> None:
    cropped = crop_to_box(gradient, (10.6, 20.2, 29.4, 49.6))
    assert cropped.size == (20, 30) and cropped.getpixel((0, 0)) == (10, 20, 0)


def test_crop_partly_outside_is_clipped(gradient: Image.Image) -> None:
    cropped = crop_to_box(gradient, (-10, -10, 30, 20))
    assert cropped.size == (30, 20)
    assert np.array_equal(np.asarray(cropped), np.asarray(gradient)[0:20, 0:30])
    assert crop_to_box(gradient, (90, 70, 500, 500)).size == (10, 10)


@pytest.mark.parametrize(
    "box", [(100, 0, 150, 10), (-50, 0, 0, 10), (0, 80, 10, 90), (200, 200, 300, 300)]
)
def test_crop_entirely_outside_is_refused(gradient: Image.Image, box: tuple[int, ...]) -> None:
    with pytest.raises(BoxError, match=r"lies entirely outside the 100x80 image") as caught:
        crop_to_box(gradient, box)
    assert "box ({:g}, {:g}, {:g}, {:g})".format(*box) in str(caught.value)


@pytest.mark.parametrize("box", [(99.5, 0, 150, 10), (0, -3, 10, 0.5), (10, 10, 10.5, 20)])
def test_crop_of_less_than_a_pixel_is_refused(
    gradient: Image.Image, box: tuple[float, ...]
) -> None:
    with pytest.raises(BoxError, match=r"covers less than one pixel of the 100x80 image"):
        crop_to_box(gradient, box)


@pytest.mark.parametrize(
    "box, problem",
    [
        ((1, 2, 3), "four comma-separated numbers"),
        (("a", 0, 1, 1), "four comma-separated numbers"),
        ((5, 5, 1, 9), "x1 .* must be greater than x0"),
        ((0, float("nan"), 1, 1), "finite"),
    ],
)
def test_crop_rejects_malformed_boxes(
    gradient: Image.Image, box: tuple[object, ...], problem: str
) -> None:
    with pytest.raises(BoxError, match=problem):
        crop_to_box(gradient, box)  # type: ignore[arg-type]


def test_max_pixels_default_is_two_to_the_29() -> None:
    assert MAX_PIXELS == 2**29 == 536_870_912
