"""Robustness catalogue: bad inputs thrown at the CLI, the Python API and the HTTP service.

Every case is data (:class:`Case`): a name, a category, an optional setup, the command (CLI, run
as a real ``python -m matchlens.cli`` process so tracebacks and exit codes are real) or the call
(API and HTTP, in this process), the expected exit code(s) / outcome / HTTP status(es), and
whether it may change the index it runs against. For each case the table counts:

* traceback: ``Traceback`` anywhere in the output (API: an exception that is not a
  MatchlensError, or a ValueError/TypeError with a one-line message);
* wrong exit: the exit code (HTTP status, API outcome) is not the expected one: 2 for a user's
  error, 0 where the input is valid but odd and must simply work;
* internal: ``matchlens: internal error`` (exit 1), which always means a bug;
* data lost: an index that existed before the case lost an image, or an image's vector changed
  (compared path by path on the published generation), unless the case asks for that change;
* hang: the case ran past its timeout (60 s unless it says otherwise);
* wrong result: the case's own check of the output failed.

Every case that touches an index gets its own copy of one tiny shared index (4 scenes at 64 px).

    python benchmarks/robustness.py [--only CATEGORY[,CATEGORY]] [--case SUBSTRING] [--json OUT] [--jobs 2] [-v]

Exit status 1 when any case fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CATEGORIES = ("files", "names", "arguments", "index", "api", "http")
DEFAULT_TIMEOUT = 60.0
SMALL = ["--max-side", "64"]
TOKEN = "robustness-token"
HTTP_MAX_UPLOAD = 200_000


# --- the case model ----------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a case sees: the shared material (read-only) and its own folder."""

    base: Path  # the run's temporary root
    scenes: Path  # the 4 indexed scenes (s0.jpg .. s3.jpg): never modified by a case
    template: Path  # the shared tiny index; cases get a copy
    work: Path = Path()  # this case's own folder (cwd of its CLI process)
    index: Path = Path()  # this case's copy of the index (when the case uses one)
    url: str = ""  # HTTP cases: the server's base URL
    server_index: Path = Path()  # HTTP cases: the served index

    @property
    def scene(self) -> Path:
        return self.scenes / "s0.jpg"

    def values(self) -> dict[str, str]:
        return {"work": str(self.work), "index": str(self.index), "scenes": str(self.scenes),
                "scene": str(self.scene), "base": str(self.base)}


@dataclass
class Outcome:
    """What one run of a case did."""

    code: Any = None  # exit code (cli), "ok"/"error"/"exception" (api), HTTP status (http)
    output: str = ""
    seconds: float = 0.0
    hung: bool = False
    traceback: bool = False
    internal: bool = False
    data_lost: str = ""  # what was lost, empty when nothing
    wrong_result: str = ""  # the case's own check, empty when fine
    skipped: str = ""  # why the case did not run

    @property
    def wrong_exit(self) -> bool:
        return not self.skipped and not self.hung and self._wrong

    _wrong: bool = False

    @property
    def failed(self) -> bool:
        return not self.skipped and (self.hung or self.traceback or self.internal or self._wrong
                                     or bool(self.data_lost) or bool(self.wrong_result))


@dataclass
class Case:
    """One bad input: ``run(ctx)`` gives an Outcome; ``expect`` the acceptable codes."""

    name: str
    category: str
    kind: str  # cli | api | http
    run: Callable[[Ctx], Outcome]
    expect: tuple[Any, ...]
    setup: Callable[[Ctx], None] | None = None
    uses_index: bool = False  # gets a copy of the shared index as ctx.index; checked for losses
    may_change: bool = False  # the case asks for the index to change (losses are not counted)
    check: Callable[[Ctx, Outcome], str | None] | None = None  # extra check: a complaint or None
    skip: Callable[[], str | None] | None = None
    timeout: float = DEFAULT_TIMEOUT
    note: str = ""
    fixed: bool = True  # expected to pass now (tests/test_robustness.py runs these)

    @property
    def runs_in_process(self) -> bool:
        return self.kind in ("api", "http")


def _fmt(argv: Sequence[Any], ctx: Ctx) -> list[Any]:
    values = ctx.values()
    return [a.format(**values) if isinstance(a, str) else a for a in argv]


def cli(name: str, category: str, argv: Sequence[Any] | Callable[[Ctx], Sequence[Any]], expect: int | tuple[int, ...],
        cwd: str | Callable[[Ctx], Path] | None = None, **options: Any) -> Case:
    """A case running ``matchlens ARGV`` as a process (``{index}``, ``{work}``, ``{scene}``,
    ``{scenes}`` are filled in; a bytes argument is passed as it is)."""
    expected = expect if isinstance(expect, tuple) else (expect,)
    timeout = options.get("timeout", DEFAULT_TIMEOUT)

    def run(ctx: Ctx) -> Outcome:
        args = argv(ctx) if callable(argv) else _fmt(argv, ctx)
        folder = cwd(ctx) if callable(cwd) else (Path(cwd.format(**ctx.values())) if cwd else ctx.work)
        return run_cli(args, folder, timeout)

    says = options.pop("says", None)
    if says:
        options["check"] = _says(says, options.get("check"))
    uses_index = options.pop("uses_index", None)
    if uses_index is None:
        uses_index = "{index}" in " ".join(a for a in (argv if not callable(argv) else []) if isinstance(a, str))
    return Case(name, category, "cli", run, expected, uses_index=uses_index, **options)


def _says(text: str, then: Callable[[Ctx, Outcome], str | None] | None) -> Callable[[Ctx, Outcome], str | None]:
    """A check: a failing run's one error line mentions ``text`` (the mistake it is about)."""
    def check(ctx: Ctx, outcome: Outcome) -> str | None:
        if outcome.code == 2 and text.lower() not in _last_line(outcome.output).lower():
            return f"the error does not mention {text!r}: {_last_line(outcome.output)[:120]}"
        return then(ctx, outcome) if then else None

    return check


def api(name: str, category: str, call: Callable[[Ctx], Any], expect: str | tuple[str, ...], **options: Any) -> Case:
    """A case calling the Python API in this process: outcome ``ok`` (returned), ``error`` (a
    MatchlensError, or a ValueError/TypeError with a one-line message), else ``exception``."""
    expected = expect if isinstance(expect, tuple) else (expect,)
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    return Case(name, category, "api", lambda ctx: run_api(call, ctx, timeout), expected, **options)


def web(name: str, category: str, request: Callable[[Ctx], tuple[int, str]], expect: int | tuple[int, ...],
         **options: Any) -> Case:
    """A case sending a request to the served tiny index; ``request`` returns (status, body)."""
    expected = expect if isinstance(expect, tuple) else (expect,)
    return Case(name, category, "http", lambda ctx: run_http(request, ctx), expected, **options)


# --- running -----------------------------------------------------------------------------------
def run_cli(args: Sequence[Any], cwd: Path, timeout: float) -> Outcome:
    env = {k: v for k, v in os.environ.items() if k not in ("MATCHLENS_DEBUG", "MATCHLENS_RUNTIME")}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    cmd = [PYTHON, "-m", "matchlens.cli", *[a if isinstance(a, bytes) else str(a) for a in args]]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        text = _text(out) + _text(err)
        return Outcome(code=None, output=text, seconds=time.monotonic() - start, hung=True)
    text = _text(out) + _text(err)
    return Outcome(code=proc.returncode, output=text, seconds=time.monotonic() - start,
                   traceback="Traceback" in text, internal="matchlens: internal error" in text)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class WrongResult(Exception):
    """Raised by an API case's own check: the call returned, but not what it should."""


def run_api(call: Callable[[Ctx], Any], ctx: Ctx, timeout: float) -> Outcome:
    from matchlens.errors import MatchlensError

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call(ctx)
        except BaseException as exc:  # noqa: BLE001 - every exception is an outcome here
            box["exc"] = exc
            box["tb"] = traceback.format_exc()

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    seconds = time.monotonic() - start
    if thread.is_alive():
        return Outcome(code=None, seconds=seconds, hung=True, output="(still running)")
    exc = box.get("exc")
    if exc is None:
        return Outcome(code="ok", output=repr(box.get("value"))[:300], seconds=seconds)
    if isinstance(exc, WrongResult):
        return Outcome(code="ok", output=str(exc), seconds=seconds, wrong_result=str(exc))
    message = f"{type(exc).__name__}: {exc}"
    one_line = "\n" not in str(exc).strip() and bool(str(exc).strip())
    if isinstance(exc, MatchlensError) or (isinstance(exc, (ValueError, TypeError)) and one_line):
        return Outcome(code="error", output=message, seconds=seconds)
    return Outcome(code="exception", output=box.get("tb", message), seconds=seconds, traceback=True)


def run_http(request: Callable[[Ctx], tuple[int, str]], ctx: Ctx) -> Outcome:
    start = time.monotonic()
    try:
        status, body = request(ctx)
    except TimeoutError as exc:
        return Outcome(code=None, output=str(exc), seconds=time.monotonic() - start, hung=True)
    except Exception as exc:  # noqa: BLE001 - a dropped connection is an outcome
        return Outcome(code="no response", output=f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - start)
    return Outcome(code=status, output=body[:2000], seconds=time.monotonic() - start,
                   traceback="Traceback" in body, internal=status >= 500)


# --- index snapshots (data-loss check) -----------------------------------------------------------
def snapshot(root: Path) -> dict[str, str] | None:
    """path → sha1 of its searchable vector, for the published generation; None if unreadable."""
    import numpy as np

    try:
        generation = root / (root / "CURRENT").read_text().strip()
        con = sqlite3.connect(f"file:{generation / 'meta.sqlite'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT path, row FROM images WHERE status = 'indexed'").fetchall()
        finally:
            con.close()
        vectors = np.load(generation / "vectors.npy", mmap_mode="r")
        return {path: hashlib.sha1(np.ascontiguousarray(vectors[row]).tobytes()).hexdigest() for path, row in rows}
    except Exception:  # noqa: BLE001 - a corrupt index has no snapshot
        return None


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (lock files aside) → sha1 of its bytes (for indexes that cannot be read)."""
    found = {}
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        if path.is_file() and not path.is_symlink() and "lock" not in path.name:
            found[str(path.relative_to(root))] = hashlib.sha1(path.read_bytes()).hexdigest()
    return found


def losses(before: dict[str, str] | None, after: dict[str, str] | None, files_before: dict[str, str],
           root: Path) -> str:
    if before is None:  # an unreadable index: its files must still be there as they were
        now = tree_hashes(root)
        gone = [name for name, sha in files_before.items() if now.get(name) != sha]
        return f"files changed or removed: {', '.join(gone[:4])}" if gone else ""
    if after is None:
        return f"index no longer readable ({len(before)} images before)"
    missing = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    parts = []
    if missing:
        parts.append(f"{len(missing)} of {len(before)} images gone ({Path(missing[0]).name}...)")
    if changed:
        parts.append(f"{len(changed)} vectors changed")
    return "; ".join(parts)


# --- files for the cases -------------------------------------------------------------------------
def scene_image(seed: int, size: tuple[int, int] = (160, 120)):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.conftest import make_scene

    return make_scene(seed, size)


def write_scene(path: Path, seed: int = 7, **save: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scene_image(seed).save(path, **save)
    return path


def jpeg_bytes(seed: int = 7) -> bytes:
    buffer = io.BytesIO()
    scene_image(seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(seed: int = 7) -> bytes:
    buffer = io.BytesIO()
    scene_image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels, with almost no data."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def make_bad_file(kind: str, folder: Path) -> Path:
    """Create the bad (or odd) file ``kind`` in ``folder``; returns its path."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "corrupt-jpeg":
        path = folder / "corrupt.jpg"
        data = jpeg_bytes()
        path.write_bytes(data[:200] + bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)))
    elif kind == "truncated-png":
        path = folder / "truncated.png"
        data = png_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path = folder / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "text":
        path = folder / "notes.jpg"
        path.write_text("plain text, not a JPEG\n")
    elif kind == "bomb":
        path = folder / "bomb.png"
        path.write_bytes(bomb_png())
    elif kind == "png16":
        path = folder / "deep16.png"
        array = (np.asarray(scene_image(8).convert("L"), dtype=np.uint16) * 257)
        Image.fromarray(array).save(path)
    elif kind == "cmyk":
        path = folder / "cmyk.jpg"
        scene_image(9).convert("CMYK").save(path, quality=90)
    elif kind == "gif":
        path = folder / "animated.gif"
        frames = [scene_image(10 + i).convert("P") for i in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "sparse":
        path = folder / "huge.jpg"
        with open(path, "wb") as handle:
            handle.write(jpeg_bytes()[:100])
            handle.truncate(4 * 1024**3)  # 4 GiB, sparse
    elif kind == "fifo":
        path = folder / "pipe.jpg"
        os.mkfifo(path)
    elif kind == "loop":
        path = folder / "loop_a.jpg"
        os.symlink(folder / "loop_b.jpg", path)
        os.symlink(path, folder / "loop_b.jpg")
    elif kind == "broken-link":
        path = folder / "dangling.jpg"
        os.symlink(folder / "nowhere" / "gone.jpg", path)
    elif kind == "unreadable":
        path = write_scene(folder / "secret.jpg", 11)
        path.chmod(0)
    elif kind == "non-utf8":
        raw = os.fsencode(folder) + b"/caf\xe9-latin1.jpg"
        scene_image(12).save(raw.decode("utf-8", "surrogateescape"), format="JPEG")
        path = Path(os.fsdecode(raw))
    elif kind == "dir-jpg":
        path = folder / "folder.jpg"
        path.mkdir()
        write_scene(path / "inside.jpg", 13)
    else:
        raise KeyError(kind)
    return path


# file kind → (expected exit of `search INDEX FILE`, is the file a valid image that must be indexed)
FILE_KINDS: dict[str, tuple[int, bool]] = {
    "corrupt-jpeg": (2, False), "truncated-png": (2, False), "empty": (2, False), "text": (2, False),
    "bomb": (2, False), "png16": (0, True), "cmyk": (0, True), "gif": (0, True), "sparse": (2, False),
    "fifo": (2, False), "loop": (2, False), "broken-link": (2, False), "unreadable": (2, False),
    "non-utf8": (0, True), "dir-jpg": (2, False),
}


# Unreadable files that fail the same way: one index build holds them all (a build costs seconds).
PLAIN_UNREADABLE = ("corrupt-jpeg", "truncated-png", "empty", "text", "broken-link")


def _skip_unreadable() -> str | None:
    return "running as root: mode 000 does not stop root" if os.geteuid() == 0 else None


def _file_cases() -> list[Case]:
    cases = []
    for kind, (search_code, valid) in FILE_KINDS.items():
        skip = _skip_unreadable if kind == "unreadable" else None
        timeout = 20.0 if kind == "fifo" else DEFAULT_TIMEOUT

        def setup_query(ctx: Ctx, kind: str = kind) -> None:
            make_bad_file(kind, ctx.work / "q")

        def query_args(ctx: Ctx, kind: str = kind) -> list[Any]:
            path = _only_file(ctx.work / "q", kind)
            return ["search", str(ctx.index), os.fsencode(path), "-k", "2"]

        cases.append(cli(f"search query: {kind}", "files", query_args, search_code, setup=setup_query,
                         uses_index=True, skip=skip, timeout=timeout))

        def setup_folder(ctx: Ctx, kind: str = kind) -> None:
            folder = ctx.work / "src"
            write_scene(folder / "good.jpg", 21)
            make_bad_file(kind, folder)

        def indexed(ctx: Ctx, outcome: Outcome, valid: bool = valid, kind: str = kind) -> str | None:
            if outcome.code != 0:
                return None
            expected = 2 if valid else 1
            if kind == "dir-jpg":  # the folder named x.jpg is recursed into: its image counts
                expected = 2
            if kind == "non-utf8" and "not valid UTF-8" in outcome.output:  # skipped, with the reason: fine
                return None
            if f"({expected} images" not in outcome.output:
                return f"expected {expected} images indexed, output: {_last_line(outcome.output)}"
            return None

        if kind in PLAIN_UNREADABLE:
            continue  # one build covers them together (below)
        cases.append(cli(f"index folder with: {kind}", "files",
                         ["index", "{work}/src", "-i", "{work}/new", "-q", *SMALL], 0, setup=setup_folder,
                         check=indexed, skip=skip, timeout=timeout))

    def setup_all(ctx: Ctx) -> None:
        write_scene(ctx.work / "src" / "good.jpg", 21)
        for kind in PLAIN_UNREADABLE:
            make_bad_file(kind, ctx.work / "src")

    def skipped_all(ctx: Ctx, outcome: Outcome) -> str | None:
        if outcome.code == 0 and ("(1 images" not in outcome.output or f"skipped {len(PLAIN_UNREADABLE)}" not in outcome.output):
            return f"expected 1 image indexed and {len(PLAIN_UNREADABLE)} skipped: {_last_line(outcome.output)}"
        return None

    cases.append(cli(f"index folder with: {', '.join(PLAIN_UNREADABLE)}", "files",
                     ["index", "{work}/src", "-i", "{work}/new", "-q", *SMALL], 0, setup=setup_all, check=skipped_all))
    for kind in ("fifo", "sparse"):
        def setup_add(ctx: Ctx, kind: str = kind) -> None:
            make_bad_file(kind, ctx.work / "q")

        cases.append(cli(f"add to index: {kind}", "files",
                         lambda ctx, kind=kind: ["add", str(ctx.index), str(_only_file(ctx.work / "q", kind)), "-q"],
                         2, setup=setup_add, uses_index=True, timeout=20.0 if kind == "fifo" else DEFAULT_TIMEOUT))
    return cases


def _only_file(folder: Path, kind: str) -> Path:
    names = {"loop": "loop_a.jpg"}
    if kind in names:
        return folder / names[kind]
    entries = sorted(os.listdir(os.fsencode(folder)))
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), entries[0])))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


# --- names and paths ------------------------------------------------------------------------------
ODD_NAMES = {
    "spaces": "my holiday photo.jpg", "hash": "photo#1.jpg", "question": "what?.jpg", "percent": "caf%41.jpg",
    "unicode": "Café über 東京 фото.jpg", "leading-dash": "-rf.jpg", "long-name": "x" * 240 + ".jpg",
}


def _name_cases() -> list[Case]:
    cases = []
    for label, name in ODD_NAMES.items():
        def setup(ctx: Ctx, name: str = name) -> None:
            write_scene(ctx.work / "odd dir #?" / name, 31)

        folder = "{work}/odd dir #?/"

        def found(ctx: Ctx, outcome: Outcome, name: str = name) -> str | None:
            if outcome.code != 0:
                return None
            try:
                results = json.loads(outcome.output[outcome.output.index("["):])
            except ValueError:
                return "no JSON list in the output"
            return None if len(results) == 2 else f"expected 2 results, got {len(results)}"

        cases.append(cli(f"search name: {label}", "names", ["search", "{index}", "-k", "2", "--json", "--", folder + name],
                         0, setup=setup, check=found))

    def setup_all(ctx: Ctx) -> None:
        for seed, name in enumerate(ODD_NAMES.values()):
            write_scene(ctx.work / "odd dir #?" / name, 31 + seed)

    def added_all(ctx: Ctx, outcome: Outcome) -> str | None:
        if outcome.code != 0:
            return None
        names = {Path(p).name for p in snapshot(ctx.index) or {}}
        missing = [n for n in ODD_NAMES.values() if n not in names]
        return f"not indexed under their own names: {missing}" if missing else None

    cases += [
        cli("add every odd name at once", "names",
            lambda ctx: ["add", str(ctx.index), "-q", "--", *[str(ctx.work / "odd dir #?" / n) for n in ODD_NAMES.values()]],
            0, setup=setup_all, check=added_all, uses_index=True),
        cli("query without '--' that looks like an option", "names", ["search", "{index}", "-rf.jpg"], 2),
        cli("query path component over 255 bytes", "names", ["search", "{index}", "{work}/" + "y" * 300 + ".jpg"], 2),
        cli("query path of 5000 characters", "names", ["search", "{index}", "{work}/" + "z/" * 2500 + "q.jpg"], 2),
        cli("index path inside the source folder", "names",
            ["index", "{work}/src", "-i", "{work}/src/idx", "-q", *SMALL], 0, setup=_two_scenes,
            check=_images_count(2)),
        cli("index path inside the source folder, run twice", "names",
            ["index", "{work}/src", "-i", "{work}/src/idx", "-q", *SMALL], 0, setup=_built_inside,
            check=_images_count(2, own_files_not_sources=True)),
        cli("source is the index folder itself", "names", ["index", "{index}", "-i", "{index}", "-q"], 2),
        cli("source is a folder holding the index", "names", ["index", "{work}", "-i", "{index}", "-q"], 2),
        cli("index source ''", "names", ["index", "", "-i", "{work}/x", "-q"], 2),
        cli("index -i ''", "names", ["index", "{scenes}", "-i", "", "-q"], 2),
        cli("search index ''", "names", ["search", "", "{scene}"], 2),
        cli("search query ''", "names", ["search", "{index}", ""], 2),
        cli("add ''", "names", ["add", "{index}", "", "-q"], 2),
        cli("remove '' (cwd = the images' folder)", "names", ["remove", "{index}", ""], 2, cwd="{scenes}",
            uses_index=True),
        cli("info ''", "names", ["info", ""], 2),
        cli("index /nonexistent", "names", ["index", "/nonexistent", "-i", "{work}/x", "-q"], 2),
        cli("add /nonexistent", "names", ["add", "{index}", "/nonexistent", "-q"], 2),
        cli("remove /nonexistent", "names", ["remove", "{index}", "/nonexistent"], 2),
        cli("search /nonexistent index", "names", ["search", "/nonexistent", "{scene}"], 2),
        cli("info /nonexistent", "names", ["info", "/nonexistent"], 2),
        cli("kinds /nonexistent", "names", ["kinds", "/nonexistent"], 2),
        cli("encode /nonexistent", "names", ["encode", "/nonexistent", "--kind", "bow", "-q"], 2),
        cli("eval /nonexistent", "names", ["eval", "/nonexistent", "-q"], 2),
        cli("train /nonexistent", "names", ["train", "/nonexistent", "-o", "{work}/run", "-q"], 2),
        cli("train-verifier /nonexistent", "names", ["train-verifier", "/nonexistent", "-o", "{work}/v.pt", "-q"], 2),
        cli("serve /nonexistent", "names", ["serve", "/nonexistent", "--port", "0"], 2, timeout=30.0),
        cli("index into an existing file", "names", ["index", "{scenes}", "-i", "{scene}", "-q"], 2),
    ]
    return cases


def _two_scenes(ctx: Ctx) -> None:
    for i in range(2):
        write_scene(ctx.work / "src" / f"p{i}.jpg", 40 + i)


def _built_inside(ctx: Ctx) -> None:
    _two_scenes(ctx)
    outcome = run_cli(["index", ctx.work / "src", "-i", ctx.work / "src" / "idx", "-q", *SMALL], ctx.work, 120)
    if outcome.code != 0:
        raise RuntimeError(f"setup: first build failed: {_last_line(outcome.output)}")


def _images_count(n: int, own_files_not_sources: bool = False) -> Callable[[Ctx, Outcome], str | None]:
    def check(ctx: Ctx, outcome: Outcome) -> str | None:
        if outcome.code == 0 and f"({n} images" not in outcome.output:
            return f"expected {n} images: {_last_line(outcome.output)}"
        own = [line.strip() for line in outcome.output.splitlines() if "skipped" in line and "/idx/" in line]
        if own_files_not_sources and own:
            return f"the index's own files were taken as sources: {own[0][:150]}"
        return None

    return check


# --- arguments --------------------------------------------------------------------------------------
def _argument_cases() -> list[Case]:
    s = ["search", "{index}", "{scene}"]
    i = ["index", "{scenes}", "-i", "{work}/new", "-q"]
    # selfsup trains on any folder: an option that is wrongly accepted trains 2 tuples and exits 0
    t = ["train", "{scenes}", "-o", "{work}/run", "--positives", "selfsup", "--tuples", "2", "--batch", "2",
         "--max-side", "64", "--epochs", "1", "-q"]
    v = ["train-verifier", "{scenes}", "-o", "{work}/v.pt", "--pairs", "4", "--epochs", "1", "--grid", "2x2",
         "--patch-px", "4", "-q"]
    cases = [
        cli("search -k 0", "arguments", [*s, "-k", "0"], 2),
        cli("search -k -1", "arguments", [*s, "-k", "-1"], 2),
        cli("search -k 1000000000 (more than the index holds)", "arguments", [*s, "-k", "1000000000"], 0,
            check=_result_rows(4)),
        cli("search -k 10**20", "arguments", [*s, "-k", str(10**20)], (0, 2)),
        cli("search -k abc", "arguments", [*s, "-k", "abc"], 2),
        cli("box '1,2,3'", "arguments", [*s, "--box", "1,2,3"], 2),
        cli("box 'a,b,c,d'", "arguments", [*s, "--box", "a,b,c,d"], 2),
        cli("box x1 < x0", "arguments", [*s, "--box", "50,50,10,10"], 2),
        cli("box nan", "arguments", [*s, "--box", "nan,0,10,10"], 2),
        cli("box inf", "arguments", [*s, "--box", "0,0,inf,10"], 2),
        cli("box 1e400", "arguments", [*s, "--box", "0,0,1e400,10"], 2),
        cli("box outside the image", "arguments", [*s, "--box", "5000,5000,6000,6000"], 2),
        cli("box less than a pixel", "arguments", [*s, "--box", "10,10,10.2,10.2"], 2),
        cli("rerank unknown", "arguments", [*s, "--rerank", "nope"], 2),
        cli("rerank sv:k=abc", "arguments", [*s, "--rerank", "sv:k=abc"], 2),
        cli("rerank sv:k=-1", "arguments", [*s, "--rerank", "sv:k=-1"], 2),
        cli("rerank aqe:k=0", "arguments", [*s, "--rerank", "aqe:k=0"], 2),
        cli("rerank ',' (an empty chain)", "arguments", [*s, "--rerank", ","], 2),
        cli("rerank sv:bogus=1", "arguments", [*s, "--rerank", "sv:bogus=1"], 2),
        cli("rerank 'aqe:k'", "arguments", [*s, "--rerank", "aqe:k"], 2),
        cli("rerank alpha-qe alpha=nan", "arguments", [*s, "--rerank", "aqe:alpha=nan"], 2),
        cli("search --preset nope", "arguments", [*s, "--preset", "nope"], 2),
        cli("search --kind nope", "arguments", [*s, "--kind", "nope"], 2),
        cli("search --fuse 'cnn+'", "arguments", [*s, "--fuse", "cnn+"], 2),
        cli("search --kind and --fuse", "arguments", [*s, "--kind", "cnn", "--fuse", "cnn"], 2),
        cli("search query and --queries", "arguments", [*s, "--queries", "{scenes}"], 2),
        cli("search --boxes without --queries", "arguments", [*s, "--boxes", "{work}/b.json"], 2),
        cli("search --queries of an empty folder", "arguments", ["search", "{index}", "--queries", "{work}/none", "-q"],
            2, setup=lambda ctx: (ctx.work / "none").mkdir()),
        cli("search --boxes not JSON", "arguments",
            ["search", "{index}", "--queries", "{scenes}", "--boxes", "{work}/b.json", "-q"], 2,
            setup=lambda ctx: (ctx.work / "b.json").write_text("{not json")),
        cli("search --boxes a list, not an object", "arguments",
            ["search", "{index}", "--queries", "{scenes}", "--boxes", "{work}/b.json", "-q"], 2,
            setup=lambda ctx: (ctx.work / "b.json").write_text("[1, 2, 3, 4]")),
        cli("search query is a folder", "arguments", ["search", "{index}", "{scenes}"], 2),
        cli("search --runtime nope", "arguments", [*s, "--runtime", "nope"], 2),
        cli("index --preset nope", "arguments", [*i, "--preset", "nope"], 2),
        cli("index --pooling nope", "arguments", [*i, "--pooling", "nope"], 2),
        cli("index --backbone nosuchnet", "arguments", [*i, "--backbone", "nosuchnet"], 2),
        cli("index --backbone timm:nosuchnet", "arguments", [*i, "--backbone", "timm:nosuchnet"], 2),
        cli("index --scales a", "arguments", [*i, "--scales", "a"], 2),
        cli("index --scales 0", "arguments", [*i, "--scales", "0"], 2),
        cli("index --scales -1", "arguments", [*i, "--scales", "-1"], 2),
        cli("index --scales ''", "arguments", [*i, "--scales", ""], 2),
        cli("index --scales 1,,2", "arguments", [*i, "--scales", "1,,2"], 2),
        cli("index --scales nan", "arguments", [*i, "--scales", "nan"], 2),
        cli("index --max-side 1", "arguments", [*i, "--max-side", "1"], 2),
        cli("index --max-side 0", "arguments", [*i, "--max-side", "0"], 2),
        cli("index --max-side -5", "arguments", [*i, "--max-side", "-5"], 2),
        cli("index --pooling-params p=abc", "arguments", [*i, "--pooling", "gem", "--pooling-params", "p=abc"], 2),
        cli("index --pooling-params levels=0", "arguments", [*i, "--pooling", "rmac", "--pooling-params", "levels=0"], 2),
        cli("index --pooling-params garbage", "arguments", [*i, "--pooling-params", "==="], 2),
        cli("index --whitening nope", "arguments", [*i, "--whitening", "nope"], 2),
        cli("index --whitening-params dim=abc", "arguments", [*i, "--whitening", "pca", "--whitening-params", "dim=abc"], 2),
        cli("index --whitening-params dim", "arguments", [*i, "--whitening", "pca", "--whitening-params", "dim"], 2),
        cli("index --whitening-params dim=-3", "arguments", [*i, "--whitening", "pca", "--whitening-params", "dim=-3"], 2),
        cli("index --whitening-source /nonexistent", "arguments", [*i, "--whitening", "pca", "--whitening-source", "/nonexistent"], 2),
        cli("index --dba k=abc", "arguments", [*i, "--dba", "k=abc"], 2),
        cli("index --dba k=0", "arguments", [*i, "--dba", "k=0"], 2),
        cli("index --dba k=-1", "arguments", [*i, "--dba", "k=-1"], 2),
        cli("index --backend nope", "arguments", [*i, "--backend", "nope"], 2),
        cli("index --factory nonsense", "arguments", [*i, "--factory", "Nonsense42"], 2),
        cli("index --backend-params nprobe=abc", "arguments", [*i, "--backend-params", "nprobe=abc"], 2),
        cli("index --runtime nope", "arguments", [*i, "--runtime", "nope"], 2),
        cli("index missing weights file", "arguments", [*i, "--backbone", "resnet18", "--weights", "{work}/missing.pt"], 2),
        cli("index weights file of garbage", "arguments", [*i, "--weights", "{work}/garbage.pt"], 2,
            setup=_garbage_weights),
        cli("index weights: a folder", "arguments", [*i, "--weights", "{work}"], 2),
        cli("dba 'x'", "arguments", ["dba", "{index}", "x"], 2),
        cli("dba k=0", "arguments", ["dba", "{index}", "k=0"], 2),
        cli("dba k=abc", "arguments", ["dba", "{index}", "k=abc"], 2),
        cli("dba k=100 (more neighbours than images)", "arguments", ["dba", "{index}", "k=100"], (0, 2),
            may_change=True),
        cli("encode --kind nope", "arguments", ["encode", "{index}", "--kind", "nope", "-q"], 2),
        cli("encode --params k=abc", "arguments", ["encode", "{index}", "--kind", "bow", "--params", "k=abc", "-q"], 2),
        cli("encode --params k=0", "arguments", ["encode", "{index}", "--kind", "bow", "--params", "k=0", "-q"], 2),
        cli("encode --params k=-5", "arguments", ["encode", "{index}", "--kind", "vlad", "--params", "k=-5", "-q"], 2),
        cli("eval a folder that is no dataset", "arguments", ["eval", "{scenes}", "-i", "{index}", "-q"], 2),
        cli("eval --format nope", "arguments", ["eval", "{scenes}", "--format", "nope", "-q"], 2),
        cli("eval --protocol nope", "arguments", ["eval", "{work}/ds", "-i", "{index}", "--protocol", "nope", "-q"], 2,
            setup=_gt_dataset),
        cli("eval --rerank nope", "arguments", ["eval", "{work}/ds", "-i", "{index}", "--rerank", "nope", "-q"], 2,
            setup=_gt_dataset),
        cli("eval gt.json that is not JSON", "arguments", ["eval", "{work}/ds", "-i", "{index}", "-q"], 2,
            setup=lambda ctx: _gt_dataset(ctx, "{broken")),
        cli("eval gt.json of the wrong shape", "arguments", ["eval", "{work}/ds", "-i", "{index}", "-q"], 2,
            setup=lambda ctx: _gt_dataset(ctx, "[1, 2]")),
        cli("train --epochs 0", "arguments", [*t, "--epochs", "0"], 2, says="epochs"),
        cli("train --max-side 0", "arguments", [*t, "--max-side", "0"], 2, says="max_side"),
        cli("train --loss nope", "arguments", [*t, "--loss", "nope"], 2, says="loss"),
        cli("train --lr -1", "arguments", [*t, "--lr", "-1"], 2, says="lr"),
        cli("train --lr nan", "arguments", [*t, "--lr", "nan"], 2, says="lr"),
        cli("train --min-inliers -1", "arguments", [*t, "--positives", "sv", "--min-inliers", "-1"], 2, says="min_inliers"),
        cli("train --weights garbage", "arguments", [*t, "--weights", "{work}/garbage.pt"], 2, setup=_garbage_weights),
        cli("train --out an existing file", "arguments", [*t[:1], "{scenes}", "-o", "{scene}", *t[4:]], 2, says="is a file"),
        cli("train-verifier --grid 0x0", "arguments", [*v, "--grid", "0x0"], 2, says="rows"),
        cli("train-verifier --grid abc", "arguments", [*v, "--grid", "abc"], 2, says="grid"),
        cli("train-verifier --grid 1000x1000", "arguments", [*v, "--grid", "1000x1000"], 2, says="grid"),
        cli("train-verifier --metrics nope", "arguments", [*v, "--metrics", "nope"], 2, says="metric"),
        cli("train-verifier --arch nope", "arguments", [*v, "--arch", "nope"], 2, says="arch"),
        cli("train-verifier --device nope", "arguments", [*v, "--device", "nope"], 2, says="device"),
        cli("train-verifier --device cuda (no GPU here)", "arguments", [*v, "--device", "cuda"], 2, says="cuda",
            skip=_skip_with_cuda),
        cli("train-verifier --lr nan", "arguments", [*v, "--lr", "nan"], 2, says="lr"),
        cli("train-verifier --out a folder", "arguments", [*v[:2], "-o", "{work}", *v[4:]], 2, says="is a folder"),
        cli("train-verifier --out under a file", "arguments", [*v[:2], "-o", "{scene}/v.pt", *v[4:]], 2,
            says="cannot create"),
        cli("train-verifier on an empty folder", "arguments", ["train-verifier", "{work}/e", *v[2:]], 2,
            setup=lambda ctx: (ctx.work / "e").mkdir()),
        cli("explain: missing model", "arguments", ["explain", "{index}", "{scene}", "0", "-m", "{work}/missing.pt"], 2),
        cli("explain: garbage model", "arguments", ["explain", "{index}", "{scene}", "0", "-m", "{work}/garbage.pt"], 2,
            setup=_garbage_weights),
        cli("explain: result id out of range", "arguments", ["explain", "{index}", "{scene}", "999", "-m", "{work}/garbage.pt"],
            2, setup=_garbage_weights),
        cli("explain: --out a folder", "arguments", ["explain", "{index}", "{scene}", "0", "-m", "{work}/v.pt", "-o", "{work}"],
            2, setup=_verifier, says="is a folder", timeout=90.0),
        cli("explain: --out under a file", "arguments",
            ["explain", "{index}", "{scene}", "0", "-m", "{work}/v.pt", "-o", "{scene}/e.png"], 2, setup=_verifier,
            says="cannot create", timeout=90.0),
        cli("search --explain into a file", "arguments", [*s, "-k", "1", "--explain", "{scene}"], 2, says="cannot create"),
        cli("search --explain under a file", "arguments", [*s, "-k", "1", "--explain", "{scene}/ev"], 2,
            says="cannot create"),
        cli("search --explain-model not a verifier", "arguments",
            [*s, "-k", "1", "--explain", "{work}/ev", "--explain-model", "{work}/garbage.pt"], 2, setup=_garbage_weights),
        cli("demo into a file", "arguments", ["demo", "{scene}", "-q"], 2),
        cli("index --factory HNSW0", "arguments", [*i, *SMALL, "--factory", "HNSW0"], 2),
        cli("explain: bad box", "arguments", ["explain", "{index}", "{scene}", "0", "-m", "{work}/garbage.pt", "--box", "1,2"], 2,
            setup=_garbage_weights),
        cli("serve --port 70000", "arguments", ["serve", "{index}", "--port", "70000"], 2, timeout=30.0),
        cli("serve --port -1", "arguments", ["serve", "{index}", "--port", "-1"], 2, timeout=30.0),
        cli("unknown command", "arguments", ["frobnicate"], 2),
        cli("unknown option", "arguments", ["search", "{index}", "{scene}", "--frobnicate"], 2),
    ]
    return cases


def _skip_with_cuda() -> str | None:
    import torch

    return "a CUDA device is present" if torch.cuda.is_available() else None


def _verifier(ctx: Ctx) -> None:
    """A tiny trained verifier at {work}/v.pt (one epoch on 4 pairs, 2x2 grid)."""
    outcome = run_cli(["train-verifier", ctx.scenes, "-o", ctx.work / "v.pt", "--pairs", "4", "--epochs", "1",
                       "--grid", "2x2", "--patch-px", "4", "-q"], ctx.work, 120)
    if outcome.code != 0:
        raise RuntimeError(f"setup: train-verifier failed: {_last_line(outcome.output)}")


def _result_rows(n: int) -> Callable[[Ctx, Outcome], str | None]:
    def check(ctx: Ctx, outcome: Outcome) -> str | None:
        if outcome.code == 0 and outcome.output.count("/s") < n:
            return f"expected {n} result rows"
        return None

    return check


def _garbage_weights(ctx: Ctx) -> None:
    (ctx.work / "garbage.pt").write_bytes(os.urandom(4096))


def _gt_dataset(ctx: Ctx, text: str | None = None) -> None:
    folder = ctx.work / "ds"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").symlink_to(ctx.scenes)  # the indexed files themselves
    gt = {"name": "tiny", "images": sorted(p.name for p in ctx.scenes.glob("*.jpg")),
          "queries": [{"image": "s0.jpg", "positives": ["s1.jpg"]}]}
    (folder / "gt.json").write_text(text if text is not None else json.dumps(gt))


# --- broken and existing indexes ------------------------------------------------------------------
def _index_cases() -> list[Case]:
    def corrupt(mutate: Callable[[Path], None]) -> Callable[[Ctx], None]:
        return lambda ctx: mutate(ctx.index)

    def generation(root: Path) -> Path:
        return root / (root / "CURRENT").read_text().strip()

    def bad_manifest(root: Path) -> None:
        path = generation(root) / "manifest.json"
        path.unlink()
        path.write_text("{ this is not json")

    def empty_manifest(root: Path) -> None:
        path = generation(root) / "manifest.json"
        path.unlink()
        path.write_text("{}")

    def current_nowhere(root: Path) -> None:
        (root / "CURRENT").unlink()
        (root / "CURRENT").write_text("gen-999999\n")

    def current_escape(root: Path) -> None:
        (root / "CURRENT").unlink()
        (root / "CURRENT").write_text("../../../../etc\n")

    def truncated_vectors(root: Path) -> None:
        path = generation(root) / "vectors.npy"
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data[: len(data) // 3])

    def no_meta(root: Path) -> None:
        (generation(root) / "meta.sqlite").unlink()

    def garbage_meta(root: Path) -> None:
        path = generation(root) / "meta.sqlite"
        path.unlink()
        path.write_bytes(b"SQLite format 3\x00" + os.urandom(2000))

    def no_model(root: Path) -> None:
        shutil.rmtree(root / "model")

    broken = {
        "corrupted manifest": bad_manifest, "empty manifest": empty_manifest, "CURRENT pointing nowhere": current_nowhere,
        "CURRENT escaping the index": current_escape, "truncated vectors.npy": truncated_vectors,
        "meta.sqlite missing": no_meta, "meta.sqlite garbage": garbage_meta, "query model folder removed": no_model,
    }
    cases = []
    for label, mutate in broken.items():
        cases.append(cli(f"search: {label}", "index", ["search", "{index}", "{scene}", "-k", "2"],
                         0 if label == "query model folder removed" else 2, setup=corrupt(mutate)))
        cases.append(cli(f"info --check: {label}", "index", ["info", "{index}", "--check"],
                         (0, 2) if label == "query model folder removed" else 2, setup=corrupt(mutate)))
        cases.append(cli(f"add: {label}", "index", ["add", "{index}", "{work}/new.jpg", "-q"],
                         0 if label == "query model folder removed" else 2,
                         setup=lambda ctx, m=mutate: (m(ctx.index), write_scene(ctx.work / "new.jpg", 50)),
                         may_change=label == "query model folder removed"))
    cases += [
        cli("search a folder that is not an index", "index", ["search", "{scenes}", "{scene}"], 2),
        cli("search an index that is a file", "index", ["search", "{scene}", "{scene}"], 2),
        cli("add to a folder that is not an index", "index", ["add", "{work}", "{scene}", "-q"], 2),
        cli("remove IDX / (no confirmation)", "index", ["remove", "{index}", "/"], 2),
        cli("remove IDX <every image's folder> (no confirmation)", "index", ["remove", "{index}", "{scenes}"], 2),
        cli("remove an image not in the index", "index", ["remove", "{index}", "{work}/never.jpg"], 2),
        cli("remove one indexed image", "index", ["remove", "{index}", "{scene}"], 0, may_change=True,
            check=_removed_exactly(1)),
        cli("index OTHER -i EXISTING (must not drop the existing images)", "index",
            ["index", "{work}/other", "-i", "{index}", "-q"], (0, 2),
            setup=lambda ctx: write_scene(ctx.work / "other" / "o.jpg", 60)),
        cli("index OTHER -i EXISTING --weights OTHER.pt (must not ignore the weights)", "index",
            ["index", "{scenes}", "-i", "{index}", "--weights", "{work}/other.pt", "-q"], 2, setup=_other_weights,
            timeout=90.0),
        cli("index SAME -i EXISTING --preset mac (other pipeline, no --rebuild)", "index",
            ["index", "{scenes}", "-i", "{index}", "--preset", "mac", "-q"], 2),
        cli("index SAME -i EXISTING (re-run, nothing changed)", "index", ["index", "{scenes}", "-i", "{index}", "-q", *SMALL], 0,
            check=_images_count(4)),
        cli("index into a non-empty folder that is not an index", "index",
            ["index", "{scenes}", "-i", "{work}/photos", "-q", *SMALL], 2,
            setup=lambda ctx: write_scene(ctx.work / "photos" / "keep.jpg", 61), check=_keeps(Path("photos/keep.jpg"))),
        cli("dba on an index, then search", "index", ["dba", "{index}", "k=2"], 0, may_change=True),
    ]
    return cases


def _removed_exactly(n: int) -> Callable[[Ctx, Outcome], str | None]:
    def check(ctx: Ctx, outcome: Outcome) -> str | None:
        after = snapshot(ctx.index) or {}
        return None if len(after) == 4 - n else f"{4 - len(after)} images removed, expected {n}"

    return check


def _keeps(relative: Path) -> Callable[[Ctx, Outcome], str | None]:
    def check(ctx: Ctx, outcome: Outcome) -> str | None:
        return None if (ctx.work / relative).is_file() else f"{relative} was deleted"

    return check


def _other_weights(ctx: Ctx) -> None:
    """The embedded backbone's weights with one tensor changed: another weights file for it."""
    import torch

    from matchlens.models.backbones import _embedded_weights_path

    state = torch.load(_embedded_weights_path(), map_location="cpu", weights_only=True)
    key = next(k for k, v in state.items() if torch.is_floating_point(v))
    state[key] = state[key] + 0.01
    torch.save(state, ctx.work / "other.pt")


# --- the Python API ---------------------------------------------------------------------------------
def _api_cases() -> list[Case]:
    import numpy as np

    def opened(ctx: Ctx):
        import matchlens

        return matchlens.open_index(ctx.index)

    def remove_str(ctx: Ctx) -> None:
        idx = opened(ctx)
        new, _ = idx.remove(str(ctx.scene))  # a str, not a list: one path
        if new.size != 3:
            raise WrongResult(f"remove('{ctx.scene.name}') left {new.size} of 4 images, expected 3")

    def add_str(ctx: Ctx) -> None:
        path = write_scene(ctx.work / "extra.jpg", 70)
        new, _ = opened(ctx).add(str(path))
        if new.size != 5:
            raise WrongResult(f"add('{path.name}') gave {new.size} images, expected 5")

    def add_path(ctx: Ctx) -> None:
        path = write_scene(ctx.work / "extra.jpg", 71)
        new, _ = opened(ctx).add(path)
        if new.size != 5:
            raise WrongResult(f"add(Path) gave {new.size} images, expected 5")

    def create_on_existing(ctx: Ctx) -> None:
        import matchlens

        matchlens.create_index(ctx.index)

    def search(**kwargs: Any) -> Callable[[Ctx], Any]:
        def call(ctx: Ctx) -> Any:
            query = kwargs.pop("query", ctx.scene)
            return opened(ctx).search(query, **kwargs)

        return call

    def one_shot(ctx: Ctx) -> Any:
        import matchlens

        return matchlens.search(ctx.index, ctx.scene, k="5")

    def build_empty(ctx: Ctx) -> None:
        import matchlens

        (ctx.work / "empty").mkdir()
        matchlens.build_index(ctx.work / "empty", ctx.work / "new")

    def build_no_sources(ctx: Ctx) -> None:
        import matchlens

        matchlens.build_index([], ctx.work / "new")

    def open_missing(ctx: Ctx) -> None:
        import matchlens

        matchlens.open_index(ctx.work / "nowhere")

    def open_file(ctx: Ctx) -> None:
        import matchlens

        matchlens.open_index(ctx.scene)

    def search_none_index(ctx: Ctx) -> None:
        import matchlens

        matchlens.search(None, ctx.scene)

    def k_str(ctx: Ctx) -> None:
        results = opened(ctx).search(ctx.scene, k="2")
        if len(results) != 2:
            raise WrongResult(f"k='2' gave {len(results)} results")

    return [
        api("Index.remove('a.jpg') (str, not list)", "api", remove_str, "ok", uses_index=True, may_change=True),
        api("Index.remove('') ", "api", lambda ctx: opened(ctx).remove(""), "error", uses_index=True),
        api("Index.remove([])", "api", lambda ctx: opened(ctx).remove([]), "error", uses_index=True),
        api("Index.add('a.jpg') (str, not list)", "api", add_str, "ok", uses_index=True, may_change=True),
        api("Index.add(Path)", "api", add_path, "ok", uses_index=True, may_change=True),
        api("Index.add([])", "api", lambda ctx: opened(ctx).add([]), ("ok", "error"), uses_index=True),
        api("create_index() on an existing index", "api", create_on_existing, "error", uses_index=True),
        api("search(k='5')", "api", one_shot, "error", uses_index=True),
        api("Index.search(k='2')", "api", k_str, "error", uses_index=True),
        api("search(k=0)", "api", search(k=0), "error", uses_index=True),
        api("search(k=-1)", "api", search(k=-1), "error", uses_index=True),
        api("search(k=2.5)", "api", search(k=2.5), "error", uses_index=True),
        api("search(k=None)", "api", search(k=None), "error", uses_index=True),
        api("search(box=(1, 2))", "api", search(box=(1, 2)), "error", uses_index=True),
        api("search(box='1,2,3,4')", "api", search(box="1,2,3,4"), "ok", uses_index=True),
        api("search(box=(nan, 0, 5, 5))", "api", search(box=(float("nan"), 0, 5, 5)), "error", uses_index=True),
        api("search(query=5)", "api", search(query=5), "error", uses_index=True),
        api("search(query=None)", "api", search(query=None), "error", uses_index=True),
        api("search(query=b'garbage')", "api", search(query=b"garbage bytes"), "error", uses_index=True),
        api("search(query=empty array)", "api", search(query=np.zeros((0, 0, 3), np.uint8)), "error", uses_index=True),
        api("search(query=float array with nan)", "api", search(query=np.full((32, 32, 3), np.nan, np.float32)),
            ("ok", "error"), uses_index=True),
        api("search(query=1-D array)", "api", search(query=np.zeros(100, np.uint8)), "error", uses_index=True),
        api("search(query=missing path)", "api", search(query="/nonexistent/q.jpg"), "error", uses_index=True),
        api("search(rerank='nope')", "api", search(rerank="nope"), "error", uses_index=True),
        api("build_index on an empty folder", "api", build_empty, "error"),
        api("build_index([]) (an empty index)", "api", build_no_sources, ("ok", "error")),
        api("open_index(missing)", "api", open_missing, "error"),
        api("open_index(a file)", "api", open_file, "error"),
        api("search(index_dir=None)", "api", search_none_index, "error"),
    ]


# --- HTTP ------------------------------------------------------------------------------------------
def _request(ctx: Ctx, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
             raw_target: bool = False) -> tuple[int, str]:
    host, port = ctx.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        headers = dict(headers or {})
        skip_host = "Host" in headers
        conn.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        if body or method in ("POST", "PUT") and "Content-Length" not in headers:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _multipart(fields: Sequence[tuple[str, str | None, bytes]], boundary: str = "robustness-boundary") -> tuple[bytes, str]:
    parts = []
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
                     + (b"Content-Type: application/octet-stream\r\n" if filename else b"") + b"\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post_form(path: str, fields: Sequence[tuple[str, str | None, Any]], headers: dict[str, str] | None = None
               ) -> Callable[[Ctx], tuple[int, str]]:
    def request(ctx: Ctx) -> tuple[int, str]:
        body, kind = _multipart([(n, f, d() if callable(d) else d) for n, f, d in fields])
        return _request(ctx, "POST", path, body, {"Content-Type": kind, **(headers or {})})

    return request


def _http_cases() -> list[Case]:
    def image() -> bytes:
        return jpeg_bytes(80)

    auth = {"Authorization": f"Bearer {TOKEN}"}

    def big(ctx: Ctx) -> tuple[int, str]:
        body, kind = _multipart([("image", "big.jpg", os.urandom(HTTP_MAX_UPLOAD + 100_000))])
        return _request(ctx, "POST", "/search", body, {"Content-Type": kind})

    def lying_length(ctx: Ctx) -> tuple[int, str]:
        return _request(ctx, "POST", "/search", b"", {"Content-Type": "multipart/form-data; boundary=x",
                                                      "Content-Length": str(10**12)})

    def malformed(ctx: Ctx) -> tuple[int, str]:
        return _request(ctx, "POST", "/search", b"--x\r\nContent-Disposition: form-da\r\n\r\nbroken",
                        {"Content-Type": "multipart/form-data; boundary=x"})

    def no_boundary(ctx: Ctx) -> tuple[int, str]:
        return _request(ctx, "POST", "/search", b"whatever", {"Content-Type": "multipart/form-data"})

    def get(path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Callable[[Ctx], tuple[int, str]]:
        return lambda ctx: _request(ctx, method, path, headers=headers)

    def not_leaking(ctx: Ctx, outcome: Outcome) -> str | None:
        return "served a file outside the index" if "root:" in outcome.output or "import " in outcome.output else None

    def search_form(**extra: str) -> list[tuple[str, str | None, Any]]:
        return [("image", "q.jpg", image), *[(k, None, v.encode()) for k, v in extra.items()]]

    return [
        web("wrong Host header", "http", get("/health", {"Host": "evil.example.com"}), 400,
             note="the Host check is another worker's fix (service/)"),
        web("non-image upload", "http", _post_form("/search", [("image", "notes.jpg", b"plain text, not an image")]), 415),
        web("empty upload", "http", _post_form("/search", [("image", "empty.jpg", b"")]), (400, 415)),
        web("decompression bomb upload", "http", _post_form("/search", [("image", "bomb.png", bomb_png())]), (400, 413)),
        web("oversized upload", "http", big, 413),
        web("Content-Length of 1 TB", "http", lying_length, 413),
        web("bad box", "http", _post_form("/search", search_form(box="a,b")), 400),
        web("upload: box outside the image", "http", _post_form("/search", search_form(box="5000,5000,6000,6000")), 400),
        web("k=0", "http", _post_form("/search", search_form(k="0")), (400, 422)),
        web("k=abc", "http", _post_form("/search", search_form(k="abc")), (400, 422)),
        web("k=1000000", "http", _post_form("/search", search_form(k="1000000")), (400, 422)),
        web("rerank=nope", "http", _post_form("/search", search_form(rerank="nope")), 400),
        web("search without an image", "http", _post_form("/search", [("k", None, b"5")]), (400, 422)),
        web("malformed multipart", "http", malformed, (400, 422)),
        web("multipart without boundary", "http", no_boundary, (400, 422)),
        web("unknown route", "http", get("/nope"), 404),
        web("path traversal /images/../..", "http", get("/images/../../../../etc/passwd"), (400, 404, 422),
             check=not_leaking),
        web("path traversal /images/%2e%2e%2f", "http", get("/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd"), (400, 404, 422),
             check=not_leaking),
        web("path traversal /static/../", "http", get("/static/../../../../etc/passwd"), (400, 404), check=not_leaking),
        web("path traversal /static/%2e%2e", "http", get("/static/%2e%2e/%2e%2e/app.py"), (400, 404), check=not_leaking),
        web("path traversal /thumbnails/..%2f", "http", get("/thumbnails/..%2f..%2fetc%2fpasswd"), (400, 404, 422),
             check=not_leaking),
        web("image id that does not exist", "http", get("/images/999999"), 404),
        web("image id -1", "http", get("/images/-1"), (404, 422)),
        web("image id 10**30", "http", get("/images/" + "9" * 30), (404, 422)),
        web("thumbnail id abc", "http", get("/thumbnails/abc"), (404, 422)),
        web("explain id that does not exist", "http",
             _post_form("/explain", [("image", "q.jpg", image), ("id", None, b"999999")]), 404),
        web("GET /search (method not allowed)", "http", get("/search"), 405),
        web("PUT /images/1 (method not allowed)", "http", get("/images/1", method="PUT"), 405),
        web("POST /images without the token", "http", _post_form("/images", [("files", "a.jpg", image)]), 401),
        web("POST /images with a wrong token", "http",
             _post_form("/images", [("files", "a.jpg", image)], {"Authorization": "Bearer wrong"}), 403),
        web("DELETE /images/1 without the token", "http", get("/images/1", method="DELETE"), 401),
        web("POST /images (token) of a text file", "http",
             _post_form("/images", [("files", "notes.jpg", b"plain text")], auth), 415),
        web("POST /images (token) with a traversal name", "http",
             _post_form("/images", [("files", "../../../../tmp/evil.jpg", b"plain text")], auth), 415),
        web("DELETE /images/999999 (token)", "http", get("/images/999999", auth, method="DELETE"), 404),
    ]


# --- the catalogue ---------------------------------------------------------------------------------
def catalogue() -> list[Case]:
    """Every case, in table order."""
    return [*_file_cases(), *_name_cases(), *_argument_cases(), *_index_cases(), *_api_cases(), *_http_cases()]


def prepare(base: Path) -> Ctx:
    """The 4 scenes and their tiny index (built once, by the CLI, as a user would)."""
    scenes = base / "scenes"
    for i in range(4):
        write_scene(scenes / f"s{i}.jpg", i, quality=90)
    template = base / "index"
    outcome = run_cli(["index", scenes, "-i", template, "-q", *SMALL], base, 300)
    if outcome.code != 0:
        raise SystemExit(f"cannot build the shared index: {outcome.output}")
    return Ctx(base=base, scenes=scenes, template=template)


def run_case(case: Case, shared: Ctx, number: int) -> Outcome:
    reason = case.skip() if case.skip else None
    if reason:
        return Outcome(skipped=reason)
    work = shared.base / "cases" / f"{number:03d}"
    work.mkdir(parents=True)
    ctx = Ctx(base=shared.base, scenes=shared.scenes, template=shared.template, work=work, url=shared.url,
              server_index=shared.server_index)
    if case.uses_index:
        ctx.index = work / "index"
        shutil.copytree(shared.template, ctx.index, symlinks=True)
    elif case.kind == "http":
        ctx.index = shared.server_index
    try:
        if case.setup:
            case.setup(ctx)
    except Exception as exc:  # noqa: BLE001 - a setup failure is reported, not raised
        return Outcome(skipped=f"setup failed: {type(exc).__name__}: {exc}")
    watched = ctx.index if (case.uses_index or case.kind == "http") else None
    before = snapshot(watched) if watched else None
    files_before = tree_hashes(watched) if watched and before is None else {}
    outcome = case.run(ctx)
    outcome._wrong = outcome.code not in case.expect and not outcome.hung
    if watched and not case.may_change:
        outcome.data_lost = losses(before, snapshot(watched), files_before, watched)
    if case.check and not outcome.hung and not outcome.wrong_result:
        with contextlib.suppress(Exception):
            outcome.wrong_result = case.check(ctx, outcome) or ""
    _cleanup(work)
    return outcome


def _cleanup(work: Path) -> None:
    for path in work.rglob("*"):  # make everything removable (mode 000 files), then drop the case's folder
        with contextlib.suppress(OSError):
            if not path.is_symlink():
                path.chmod(0o700)
    shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def http_server(shared: Ctx):
    """The served copy of the tiny index (write endpoints on, 200 kB upload limit)."""
    from matchlens.service import create_app
    from matchlens.service.server import background

    shared.server_index = shared.base / "served"
    shutil.copytree(shared.template, shared.server_index, symlinks=True)
    app = create_app(shared.server_index, token=TOKEN, max_upload_bytes=HTTP_MAX_UPLOAD)
    with background(app) as url:
        shared.url = url
        yield


def run_all(cases: Sequence[Case], shared: Ctx, jobs: int = 2, verbose: bool = False) -> list[tuple[Case, Outcome]]:
    numbered = list(enumerate(cases))
    results: dict[int, Outcome] = {}

    def one(item: tuple[int, Case]) -> None:
        number, case = item
        results[number] = run_case(case, shared, number)
        if verbose:
            _say(case, results[number])

    processes = [item for item in numbered if not item[1].runs_in_process]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, processes))
    for item in numbered:  # API and HTTP cases in this process, one at a time
        if item[1].kind == "api":
            one(item)
    web = [item for item in numbered if item[1].kind == "http"]
    if web:
        try:
            with http_server(shared):
                for item in web:
                    one(item)
        except Exception as exc:  # noqa: BLE001 - no server: every HTTP case fails visibly
            for number, _case in web:
                results.setdefault(number, Outcome(code="no server", output=f"{type(exc).__name__}: {exc}",
                                                   _wrong=True))
    return [(case, results[number]) for number, case in numbered]


def _say(case: Case, outcome: Outcome) -> None:
    state = "skip" if outcome.skipped else ("FAIL" if outcome.failed else "ok")
    print(f"[{state:4}] {case.category:9} {case.name} -> {outcome.code} ({outcome.seconds:.1f} s)", flush=True)


# --- the report --------------------------------------------------------------------------------------
COLUMNS = ("cases", "skipped", "failed", "traceback", "wrong exit", "internal", "data lost", "hang", "wrong result")


def counts(results: Sequence[tuple[Case, Outcome]]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for case, outcome in results:
        for key in (case.category, "total"):
            row = table.setdefault(key, dict.fromkeys(COLUMNS, 0))
            row["cases"] += 1
            row["skipped"] += bool(outcome.skipped)
            row["failed"] += outcome.failed
            row["traceback"] += outcome.traceback
            row["wrong exit"] += outcome.wrong_exit
            row["internal"] += outcome.internal
            row["data lost"] += bool(outcome.data_lost)
            row["hang"] += outcome.hung
            row["wrong result"] += bool(outcome.wrong_result)
    return {key: table[key] for key in [*CATEGORIES, "total"] if key in table}


def print_report(results: Sequence[tuple[Case, Outcome]], seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200, soft_wrap=True)
    failures = Table("category", "case", "expected", "got", "problem", "output (last line)", title="failing cases",
                     show_lines=False)
    for case, outcome in results:
        if outcome.failed:
            failures.add_row(case.category, case.name, "/".join(map(str, case.expect)), str(outcome.code),
                             problems(outcome) + (f" ({case.note})" if case.note else ""),
                             _last_line(outcome.output)[:140])
    if failures.row_count:
        console.print(failures)
    summary = Table("category", *COLUMNS, title=f"robustness: {len(results)} cases in {seconds:.0f} s")
    for key, row in counts(results).items():
        summary.add_row(key, *[str(row[c]) for c in COLUMNS], style="bold" if key == "total" else None)
    console.print(summary)


def problems(outcome: Outcome) -> str:
    found = [name for name, flag in (("hang", outcome.hung), ("traceback", outcome.traceback),
                                     ("internal", outcome.internal), ("wrong exit", outcome.wrong_exit)) if flag]
    if outcome.data_lost:
        found.append(f"data lost: {outcome.data_lost}")
    if outcome.wrong_result:
        found.append(f"wrong result: {outcome.wrong_result}")
    return ", ".join(found)


def to_json(results: Sequence[tuple[Case, Outcome]]) -> dict[str, Any]:
    rows = []
    for case, outcome in results:
        data = {k: v for k, v in asdict(outcome).items() if k != "_wrong"}
        data.update(name=case.name, category=case.category, kind=case.kind, expect=list(case.expect), note=case.note,
                    fixed=case.fixed,
                    failed=outcome.failed, wrong_exit=outcome.wrong_exit, problems=problems(outcome))
        rows.append(data)
    return {"summary": counts(results), "cases": rows}


def select(cases: Sequence[Case], only: str | None = None, match: str | None = None) -> list[Case]:
    wanted = {c.strip() for c in only.split(",")} if only else None
    if wanted and not wanted <= set(CATEGORIES):
        raise SystemExit(f"unknown category {sorted(wanted - set(CATEGORIES))}; choose from {', '.join(CATEGORIES)}")
    return [c for c in cases if (wanted is None or c.category in wanted) and (not match or match in c.name)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated categories: {', '.join(CATEGORIES)}")
    parser.add_argument("--case", help="only the cases whose name contains this")
    parser.add_argument("--json", type=Path, help="write every case's outcome here")
    parser.add_argument("--jobs", type=int, default=2, help="CLI cases run at once (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per case as it ends")
    args = parser.parse_args(argv)
    cases = select(catalogue(), args.only, args.case)
    start = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="matchlens-robustness-"))
    try:
        shared = prepare(base)
        results = run_all(cases, shared, args.jobs, args.verbose)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            _cleanup(base)
    print_report(results, time.monotonic() - start)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(results), indent=1, ensure_ascii=False))
    return 1 if any(outcome.failed for _, outcome in results) else 0


if __name__ == "__main__":
    sys.exit(main())
