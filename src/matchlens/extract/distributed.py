"""Distributed extraction on an existing Dask cluster (``matchlens index --dask ADDRESS``).

The stage is reader → mapper → writer: the driver cuts the paths into batches (reader), each
Dask worker describes a batch with its own :class:`~matchlens.extract.Extractor` — built once per
worker process and spec, then reused — (mapper), and the driver receives the descriptors as
batches finish and writes them into the index through the build journal (writer), so an
interrupted distributed build resumes like a local one. No home-made RPC: tasks and results go
through ``dask.distributed``.

Workers read the image files themselves, so the paths must be readable on every worker (a
shared or identical file system), and every worker needs the same weights (a worker with a
different backbone file fails with the usual one-line weights error).
"""

from __future__ import annotations

import os
from collections import deque
from typing import Iterator, Sequence

from matchlens.config import PipelineSpec
from matchlens.errors import MatchlensError, SourceError
from matchlens.extract.extractor import Described, Extractor

BATCH = 16          # paths per task: large enough to hide scheduling overhead (~ms), small enough to balance
IN_FLIGHT = 4       # tasks queued per worker thread: bounds driver memory on huge collections
CONNECT_TIMEOUT = "10s"

_WORKER_EXTRACTORS: dict[str, Extractor] = {}  # per worker process: spec fingerprint -> Extractor


def describe_batch(spec_dict: dict, paths: list[str]) -> list[Described]:
    """Describe ``paths`` on a worker (the task body; runs in the worker process).

    The extractor of a spec is built on the worker's first task and kept for the next ones; it
    uses as many torch threads as the worker has Dask threads.
    """
    spec = PipelineSpec.from_dict(spec_dict)
    key = spec.fingerprint()
    extractor = _WORKER_EXTRACTORS.get(key)
    if extractor is None:
        extractor = Extractor(spec, threads=_worker_threads())
        _WORKER_EXTRACTORS[key] = extractor
    return list(extractor.describe_files(paths, workers=1))


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return max(1, (os.cpu_count() or 1))


def describe_files_dask(paths: Sequence[str], spec: PipelineSpec, address: str,
                        batch: int = BATCH) -> Iterator[Described]:
    """Describe ``paths`` on the workers of the Dask scheduler at ``address``; yields items as
    batches finish (not in input order). Unreadable files yield items with ``error`` set, as
    :meth:`Extractor.describe_files` does.

    Closing the iterator early (Ctrl-C in the driver) cancels the tasks not yet finished.
    """
    from distributed import as_completed

    paths = list(paths)
    if not paths:
        return
    client = connect(address)
    pending: set = set()
    try:
        spec_dict = spec.to_dict()
        batches = deque(paths[i:i + batch] for i in range(0, len(paths), batch))
        limit = max(2, IN_FLIGHT * max(1, _total_threads(client)))

        def submit():
            future = client.submit(describe_batch, spec_dict, batches.popleft(), pure=False)
            pending.add(future)
            return future

        running = as_completed([submit() for _ in range(min(limit, len(batches)))], loop=client.loop)
        for future in running:
            pending.discard(future)
            items = _result(future)
            if batches:
                running.add(submit())  # before yielding: the workers stay busy while the driver writes
            yield from items
    finally:
        for future in pending:
            future.cancel()
        client.close()


def connect(address: str):
    """A ``distributed.Client`` of the scheduler at ``address``, or a one-line SourceError."""
    from distributed import Client

    text = address if "://" in address else f"tcp://{address}"
    try:
        return Client(text, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise SourceError(f"cannot reach the Dask scheduler at {text}: {reason}") from None


def _total_threads(client) -> int:
    info = client.scheduler_info()
    return sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values())


def _result(future) -> list[Described]:
    """A finished batch's items; a worker's user-facing error comes back as one line."""
    try:
        return future.result()
    except MatchlensError:
        raise
    except Exception as exc:  # a task that failed on the worker (import error, lost worker, ...)
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise MatchlensError(f"a Dask worker failed to describe a batch: {type(exc).__name__}: {reason}") from None
