"""Load test of `matchlens serve` on loopback: N concurrent clients posting searches.

The server is the real command (`matchlens serve DEMO/index --port 0`) in its own process; the
clients are httpx async clients in this process, each posting the demo's query photos (round
robin) to POST /search until the time or request budget is spent. Per client count it prints
requests/s, latency percentiles, errors (must be 0), top-1 correctness and the server's own
per-step timings, with the machine load (`uptime`) before and after. It also checks that the
server process holds no TCP connection to any non-loopback address.

    python benchmarks/serve.py [--demo bench-out/serve-demo] [--clients 1 4 16] [--duration 20]
                               [--requests 0] [--k 10] [--rerank CHAIN]

--demo is a `matchlens demo` output folder (index/, queries/, queries.json): reused if it has an
index, otherwise the demo collection and its default-preset index are built there first.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

console = Console(width=170, soft_wrap=True)  # the table is wide; never wrap it, even in a pipe


@dataclass
class Run:
    """What one client count measured."""

    clients: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    correct: int = 0
    server_ms: dict[str, list[float]] = field(default_factory=dict)


def demo_index(folder: Path) -> tuple[Path, list[tuple[str, bytes, str]]]:
    """The demo index in ``folder`` (built if missing) and its queries as (name, bytes, expected result)."""
    index_dir = folder / "index"
    if not (index_dir / "CURRENT").is_file():
        import matchlens
        from matchlens.cli import progress_factory
        from matchlens.demo.collection import build_demo_collection

        console.print(f"building the demo collection and index in {folder} (once)")
        collection, _, _ = build_demo_collection(folder)
        with progress_factory() as progress:
            matchlens.build_index(collection, index_dir, progress=progress)
    queries = json.loads((folder / "queries.json").read_text())
    return index_dir, [(q["image"], (folder / "queries" / q["image"]).read_bytes(), q["source"]) for q in queries]


def start_server(index_dir: Path) -> tuple[subprocess.Popen, str]:
    """`matchlens serve` on a free loopback port; returns the process and its base URL."""
    process = subprocess.Popen([sys.executable, "-m", "matchlens.cli", "serve", str(index_dir), "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    match = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
    if not match:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, match.group(1)


async def load(base: str, queries, clients: int, duration: float, max_requests: int, k: int, rerank: str | None) -> Run:
    """``clients`` workers posting searches until ``duration`` seconds or ``max_requests`` (0: no cap)."""
    run = Run(clients)
    counter = itertools.count()
    form = {"k": str(k), **({"rerank": rerank} if rerank else {})}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as http:
        start = time.perf_counter()

        async def worker() -> None:
            while time.perf_counter() - start < duration:
                n = next(counter)
                if max_requests and n >= max_requests:
                    return
                name, data, expected = queries[n % len(queries)]
                t0 = time.perf_counter()
                try:
                    response = await http.post("/search", files={"image": (name, data, "image/jpeg")}, data=form)
                except httpx.HTTPError as exc:
                    run.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                run.latencies_ms.append(1000 * (time.perf_counter() - t0))
                if response.status_code != 200:
                    run.errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                body = response.json()
                run.correct += bool(body["results"]) and body["results"][0]["name"] == expected
                for step, ms in body["timings_ms"].items():
                    run.server_ms.setdefault(step, []).append(ms)

        await asyncio.gather(*(worker() for _ in range(clients)))
        run.seconds = time.perf_counter() - start
    return run


class ConnectionWatch:
    """Samples, every 0.2 s in a thread, the TCP connections of a process whose remote end is not
    a loopback address (the server must make none, e.g. no telemetry, no CDN, no model hub)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.outside: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "ConnectionWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            try:
                for conn in self.process.net_connections(kind="inet"):
                    if conn.raddr and not ipaddress.ip_address(conn.raddr.ip).is_loopback:
                        self.outside.add(f"{conn.raddr.ip}:{conn.raddr.port}")
            except psutil.Error:
                return


def report(runs: list[Run], index_size: int, rerank: str | None) -> Table:
    table = Table(title=f"POST /search on {index_size} images, k=10{', rerank ' + rerank if rerank else ''}")
    for column in ("clients", "requests", "seconds", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors",
                   "top-1 ok", "server extract ms", "server total ms"):
        table.add_column(column, justify="right")
    for run in runs:
        lat = np.array(run.latencies_ms or [float("nan")])
        done = len(run.latencies_ms)
        table.add_row(
            str(run.clients), str(done), f"{run.seconds:.1f}", f"{done / run.seconds:.2f}",
            *(f"{np.percentile(lat, q):.0f}" for q in (50, 90, 99)), f"{lat.max():.0f}", str(len(run.errors)),
            f"{100 * run.correct / max(1, done):.0f}%",
            f"{np.median(run.server_ms.get('extract', [np.nan])):.0f}", f"{np.median(run.server_ms.get('total', [np.nan])):.0f}")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=Path("bench-out/serve-demo"), help="demo output folder")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent client counts")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per client count")
    parser.add_argument("--requests", type=int, default=0, help="request cap per client count (0: none)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rerank", default=None, help="re-ranking chain sent with every search")
    args = parser.parse_args()

    index_dir, queries = demo_index(args.demo.resolve())
    load_before = os.getloadavg()
    process, base = start_server(index_dir)
    try:
        with ConnectionWatch(process.pid) as watch:
            info = httpx.get(f"{base}/index", timeout=300).json()
            index_size, pipeline = info["images"], info["pipeline"]
            asyncio.run(load(base, queries, 1, 1e9, len(queries), args.k, args.rerank))  # warm-up: every query once
            runs = [asyncio.run(load(base, queries, n, args.duration, args.requests, args.k, args.rerank))
                    for n in args.clients]
        outside = sorted(watch.outside)
    finally:
        process.terminate()
        code = process.wait(60)
    load_after = os.getloadavg()
    console.print(report(runs, index_size, args.rerank))
    console.print(f"server: {base}, index {index_dir} ({pipeline}); stopped by SIGTERM, exit code {code}")
    console.print("load average (1/5/15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f} "
                  "on {} CPUs".format(*load_before, *load_after, os.cpu_count()))
    console.print(f"connections of the server to non-loopback addresses: {len(outside)} {outside or ''}")
    errors = [e for run in runs for e in run.errors]
    for error in errors[:5]:
        console.print(f"error: {error}", markup=False)
    return 1 if errors or outside or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
