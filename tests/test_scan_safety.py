"""Hostile folder entries and files: FIFOs, huge and sparse files, pixel bombs under the pixel
limit, symlink loops, broken links, names that are not UTF-8, unreadable files, empty sources.

Each must end in a one-line error (a query) or a skipped entry with its reason (a collection),
never a hang, a crash of the whole build, or gigabytes of memory. Tests that could hang on a
regression release the FIFO themselves after a few seconds and then fail instead.
"""

from __future__ import annotations

import os
import re
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from matchlens.config import PipelineSpec
from matchlens.errors import ImageLoadError, SourceError
from matchlens.extract.extractor import Described, Extractor
from matchlens.index.metadata import Entry, read_entries, write_entries
from matchlens.io import images
from matchlens.io.collection import scan_source
from matchlens.io.images import image_size, load_image
from tests.conftest import make_scene

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX file types")

GIB = 2**30
PEAK_LIMIT = 1_500_000_000  # bytes: what decoding one 22000x22000 PNG may take at most
LATIN1_NAME = b"caf\xe9.jpg"  # 'café.jpg' in Latin-1: not valid UTF-8


# --------------------------------------------------------------------------------------------
# Helpers


@contextmanager
def released_after(fifo: Path, seconds: float = 5.0) -> Iterator[None]:
    """Fail instead of hanging: if something still waits on ``fifo`` after ``seconds``, open its
    write end (so a blocked reader gets end-of-file) and fail the test once the body is done."""
    done = threading.Event()
    released: list[float] = []

    def release() -> None:
        if done.wait(seconds):
            return
        while not done.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader is waiting right now
                time.sleep(0.05)
                continue
            released.append(time.monotonic())
            os.close(fd)
            time.sleep(0.05)

    watchdog = threading.Thread(target=release, daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()
    assert not released, f"reading {fifo.name} blocked until the test opened its write end"


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int = 2 * GIB) -> Path:
    """A file of ``size`` bytes that takes no disk space."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _latin1_named(folder: Path) -> str:
    """A real JPEG whose file name is not valid UTF-8; returns the name as Python lists it."""
    with open(os.fsencode(folder) + b"/" + LATIN1_NAME, "wb") as handle:
        make_scene(7, (64, 48)).save(handle, format="JPEG")
    return os.fsdecode(LATIN1_NAME)


def _reader(max_side: int = 128) -> Extractor:
    """An Extractor with only what its file reader needs (no network is loaded)."""
    extractor = object.__new__(Extractor)
    extractor.spec = PipelineSpec(max_side=max_side)
    return extractor


def _read(path: str | Path) -> Described:
    item, image = _reader()._read_decode(str(path))
    assert (image is None) == (item.error is not None)
    return item


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _write_black_png(path: Path, side: int, colour_type: int, channels: int) -> Path:
    """A side x side black 8-bit PNG written row by row, never holding the image in memory."""
    compressor = zlib.compressobj(1)  # fastest; zeros still shrink about 230 times
    row = bytes(1 + side * channels)  # filter byte 0, then the samples
    with open(path, "wb") as handle:
        header = struct.pack(">IIBBBBB", side, side, 8, colour_type, 0, 0, 0)
        handle.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header))
        data = [compressor.compress(row) for _ in range(side)]
        data.append(compressor.flush())
        handle.write(_png_chunk(b"IDAT", b"".join(data)))
        handle.write(_png_chunk(b"IEND", b""))
    return path


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def _reset_peak() -> int:
    """Reset this process's peak RSS to its current RSS (Linux clear_refs 5); returns it."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_bytes("VmRSS")


_PEAK_SCRIPT = """
import sys
from matchlens.errors import ImageLoadError
from matchlens.io.images import load_image
try:
    image = load_image(sys.argv[1], max_side=640)
    outcome = "loaded %dx%d" % image.size
except ImageLoadError as error:
    outcome = "refused: %s" % error
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a subprocess of a big
# pytest process would report the parent's peak.
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")))
print(outcome)
"""


# --------------------------------------------------------------------------------------------
# 1. FIFOs and other non-regular files


def test_fifo_query_is_a_one_line_error_not_a_hang(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path / "x.jpg")
    with released_after(fifo):
        with pytest.raises(ImageLoadError, match=r"^cannot read '.*x\.jpg': not a regular file \(FIFO\)$"):
            load_image(fifo)
        with pytest.raises(ImageLoadError, match=r"not a regular file \(FIFO\)$"):
            image_size(fifo)


def test_fifo_in_a_collection_is_skipped_by_the_reader(tmp_path: Path) -> None:
    fifo = _fifo(tmp_path / "x.jpg")
    with released_after(fifo):
        item = _read(fifo)
    assert item.error is not None and item.error.endswith("not a regular file (FIFO)")
    assert "\n" not in item.error


def test_character_device_is_refused(tmp_path: Path) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    link = tmp_path / "zero.jpg"
    link.symlink_to("/dev/zero")  # endless data: reading it whole never returns
    with pytest.raises(ImageLoadError, match=r"not a regular file \(character device\)$"):
        load_image(link)
    item = _read(link)
    assert item.error is not None and item.error.endswith("not a regular file (character device)")


# --------------------------------------------------------------------------------------------
# 2. File size cap


def test_huge_file_is_refused_from_its_size_before_reading(tmp_path: Path) -> None:
    big = _sparse(tmp_path / "big.jpg")
    before = _reset_peak()
    limit = "over the limit of 256 MiB for image files (set MATCHLENS_MAX_FILE_MB to raise it)"
    with pytest.raises(ImageLoadError, match=r"^cannot read '.*big\.jpg': file is 2048 MiB, " + re.escape(limit) + "$"):
        load_image(big)
    item = _read(big)
    assert item.error is not None and item.error.endswith(limit)
    assert item.size == 2 * GIB
    grown = _status_bytes("VmHWM") - before
    assert grown < 256 * 2**20, f"reading the refused file took {grown >> 20} MiB"


def test_file_size_limit_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(path)
    assert path.stat().st_size > 4096
    monkeypatch.setenv("MATCHLENS_MAX_FILE_MB", "0.004")
    with pytest.raises(ImageLoadError, match=r"over the limit of 0\.004 MiB"):
        load_image(path)
    with pytest.raises(ImageLoadError, match=r"over the limit of 0\.004 MiB"):
        images.read_image_file(path)
    monkeypatch.setenv("MATCHLENS_MAX_FILE_MB", "1")
    assert load_image(path).size == (64, 64)
    monkeypatch.setenv("MATCHLENS_MAX_FILE_MB", "lots")
    with pytest.raises(ImageLoadError, match=r"^invalid MATCHLENS_MAX_FILE_MB='lots': expected a positive"):
        load_image(path)


# --------------------------------------------------------------------------------------------
# 3. Decoding memory


@pytest.mark.parametrize("mode, colour_type, channels", [("L", 0, 1), ("RGB", 2, 3)])
def test_22000_square_png_is_refused_or_decoded_within_1_5_gb(
    tmp_path: Path, mode: str, colour_type: int, channels: int
) -> None:
    path = _write_black_png(tmp_path / f"huge_{mode}.png", 22_000, colour_type, channels)
    assert path.stat().st_size < 8 * 2**20 and 22_000**2 < images.MAX_PIXELS
    env = {**os.environ, "MATCHLENS_MAX_DECODE_MB": "", "MATCHLENS_MAX_FILE_MB": ""}
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    peak, outcome = done.stdout.split("\n", 1)
    assert outcome.startswith(("loaded", "refused")), outcome
    if outcome.startswith("loaded"):
        assert outcome.strip() == "loaded 648x648"  # shrunk by 34: still at least 640
    else:
        assert "MATCHLENS_MAX_DECODE_MB" in outcome and "\n" not in outcome.strip()
    assert int(peak) <= PEAK_LIMIT, f"{mode}: peak RSS {int(peak) >> 20} MiB ({outcome.strip()})"


def test_over_budget_image_is_shrunk_in_its_own_mode_with_max_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grey = np.tile(np.arange(1200, dtype=np.uint16) % 256, (900, 1)).astype(np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)
    full = load_image(path)
    monkeypatch.setenv("MATCHLENS_MAX_DECODE_MB", "2")  # 1 MB decoded, 5 MB as RGB
    with pytest.raises(ImageLoadError, match=r"1200x900 L pixels need about 5\.15 MiB to decode, over "
                                             r"the decoding limit of 2 MiB \(set MATCHLENS_MAX_DECODE_MB"):
        load_image(path)
    shrunk = load_image(path, max_side=300)
    assert shrunk.mode == "RGB" and shrunk.size == (300, 225)  # reduced by 4
    expected = full.reduce(4)
    assert np.abs(_ints(shrunk) - _ints(expected)).max() <= 1


def test_shrinking_keeps_orientation_and_palette_colours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    palette = Image.new("RGB", (400, 200), (200, 30, 40)).convert("P", palette=Image.Palette.ADAPTIVE)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    path = tmp_path / "turned.png"
    palette.save(path, exif=exif)
    monkeypatch.setenv("MATCHLENS_MAX_DECODE_MB", "0.2")
    loaded = load_image(path, max_side=100)
    assert loaded.size == (50, 100)
    assert loaded.getpixel((10, 10)) == (200, 30, 40)


def test_images_within_the_budget_decode_exactly_as_before(tmp_path: Path) -> None:
    photo = make_scene(3, (300, 200))
    path = tmp_path / "photo.png"
    photo.save(path)
    assert np.array_equal(_ints(load_image(path, max_side=20)), _ints(photo))


def _ints(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


# --------------------------------------------------------------------------------------------
# 4. Odd directory entries


def test_scan_lists_loops_broken_links_and_undecodable_names(tmp_path: Path) -> None:
    make_scene(1, (64, 48)).save(tmp_path / "good.jpg")
    (tmp_path / "self").symlink_to("self")
    (tmp_path / "ping").symlink_to("pong")
    (tmp_path / "pong").symlink_to("ping")
    (tmp_path / "dangling.jpg").symlink_to("nowhere.jpg")
    _fifo(tmp_path / "pipe.jpg")
    _latin1_named(tmp_path)
    found = scan_source(tmp_path)
    names = sorted(os.path.basename(p) for p in found)
    assert names == ["caf\\xe9.jpg", "dangling.jpg", "good.jpg", "ping", "pipe.jpg", "pong", "self"]
    for path in found:
        path.encode("utf-8")  # every listed path can be stored and printed


@pytest.mark.parametrize("link, reason", [("self", "symlink loop"), ("dangling.jpg", "broken link")])
def test_loops_and_broken_links_are_skipped_with_their_reason(tmp_path: Path, link: str, reason: str) -> None:
    (tmp_path / "self").symlink_to("self")
    (tmp_path / "dangling.jpg").symlink_to("nowhere.jpg")
    with pytest.raises(ImageLoadError, match=rf"^cannot read '.*{link}': {reason}"):
        load_image(tmp_path / link)
    [listed] = [p for p in scan_source(tmp_path) if p.endswith(link)]
    item = _read(listed)
    assert item.error is not None and reason in item.error


def test_undecodable_name_is_skipped_with_a_displayable_path(tmp_path: Path) -> None:
    real_name = _latin1_named(tmp_path)
    [listed] = scan_source(tmp_path)
    assert listed == str(tmp_path / "caf\\xe9.jpg")
    item = _read(listed)
    assert item.error == f"cannot read {listed!r}: file name is not valid UTF-8; rename it"
    item = _read(tmp_path / real_name)  # the surrogate-escaped name, as os.listdir gives it
    assert item.error is not None and item.error.endswith("file name is not valid UTF-8; rename it")
    item.error.encode("utf-8")


def test_metadata_stores_undecodable_names(tmp_path: Path) -> None:
    name = str(tmp_path / os.fsdecode(LATIN1_NAME))
    entry = Entry(id=0, path=name, sha256="", size=1, mtime=0.0, status="skipped",
                  error=f"cannot read {name}: nope")
    write_entries(tmp_path / "meta.sqlite", [entry])
    [stored] = read_entries(tmp_path / "meta.sqlite")
    assert stored.path == str(tmp_path / "caf\\xe9.jpg")
    assert stored.error == f"cannot read {stored.path}: nope"
    with sqlite3.connect(tmp_path / "meta.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM images").fetchone() == (1,)


def test_unreadable_file_is_skipped_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked.jpg"
    make_scene(2, (64, 48)).save(locked)
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads files whatever their mode: fail as others would
        real_open = os.open

        def deny(path, flags, *args, **kwargs):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(images.os, "open", deny)
    try:
        assert scan_source(tmp_path) == [str(locked)]
        item = _read(locked)
        assert item.error is not None and item.error.endswith("permission denied")
    finally:
        locked.chmod(0o644)


# --------------------------------------------------------------------------------------------
# 5. Empty sources


@pytest.mark.parametrize("source", ["", "   ", "\t\n"])
def test_empty_source_is_a_user_error_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    make_scene(0, (64, 48)).save(tmp_path / "here.jpg")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"^empty path"):
        scan_source(source)


# --------------------------------------------------------------------------------------------
# All at once, through the real build


def test_build_skips_every_hostile_entry_and_indexes_the_rest(tmp_path: Path, small_spec) -> None:
    from matchlens.api import build_index_report, search

    folder = tmp_path / "photos"
    folder.mkdir()
    make_scene(11).save(folder / "one.jpg")
    make_scene(12).save(folder / "two.png")
    fifo = _fifo(folder / "x.jpg")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    _latin1_named(folder)
    _sparse(folder / "big.jpg")
    started = time.monotonic()
    with released_after(fifo, seconds=20):
        index, report = build_index_report(folder, tmp_path / "index", spec=small_spec)
    assert time.monotonic() - started < 120
    assert report.indexed == index.size == 2
    reasons = {os.path.basename(path): error for path, error in report.skipped_files}
    assert sorted(reasons) == ["big.jpg", "caf\\xe9.jpg", "loop.jpg", "x.jpg"]
    assert reasons["x.jpg"].endswith("not a regular file (FIFO)")
    assert reasons["loop.jpg"].endswith("symlink loop")
    assert reasons["caf\\xe9.jpg"].endswith("file name is not valid UTF-8; rename it")
    assert "MATCHLENS_MAX_FILE_MB" in reasons["big.jpg"]
    assert all("\n" not in reason for reason in reasons.values())
    with released_after(fifo):
        with pytest.raises(ImageLoadError, match=r"^cannot read '.*x\.jpg': not a regular file \(FIFO\)$"):
            search(tmp_path / "index", fifo)
