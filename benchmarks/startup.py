"""Cold-start latency of the CLI: each command as a fresh process, N times, plus the same work warm.

Commands (the issue's budgets: search <= 1.5 s, info and --help <= 0.5 s, median, idle machine):

    matchlens --help
    matchlens info INDEX
    matchlens search INDEX QUERY -k 5
    matchlens search INDEX QUERY -k 5 --json

"cold" runs the installed ``matchlens`` script of this interpreter's environment as a new process
(wall time from spawn to exit, output discarded), ``--repeat`` times: median, min and max.
"warm" is the same command run in-process by ``matchlens.cli.main`` in one child process that
has already run it once (imports done, index and model sessions loaded); search's warm run uses
a second query photo, so it is encoding and searching a new image, not a cache hit. Warm is the
median of ``--warm-repeat`` runs.

    python benchmarks/startup.py [--index INDEX --query IMG [--query2 IMG]] [--demo DIR]
                                 [--repeat 5] [--warm-repeat 3] [--runtime NAME]

Without ``--index`` the demo collection and index are built in ``--demo`` (default
``bench-out/startup-demo``; reused when it already has an index, about 25 s otherwise), and the
queries are the demo's first query photos. Prints a markdown table and the machine load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BUDGETS = {"--help": 0.5, "info": 0.5, "search": 1.5, "search --json": 1.5}

# In a child process: run main(args) once (warming), then time main(args2) `repeat` times.
_WARM = textwrap.dedent("""
    import contextlib, io, json, sys, time
    first, second, repeat = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
    from matchlens.cli import main

    def run(args):
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            try:
                main(args)
            except SystemExit as exc:
                if exc.code not in (0, None):
                    raise RuntimeError(f"exit {exc.code}: {sink.getvalue()[-500:]}") from None

    run(first)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(second)
        times.append(time.perf_counter() - start)
    print(json.dumps(times))
""")


def matchlens_command() -> list[str]:
    """The console script of this interpreter's environment (else ``python -c`` calling main)."""
    script = Path(sys.executable).with_name("matchlens")
    if script.exists():
        return [str(script)]
    found = shutil.which("matchlens")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from matchlens.cli import main; sys.exit(main())"]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def ensure_demo(folder: Path) -> Path:
    """The demo index in ``folder`` (built there first when missing)."""
    index = folder / "index"
    if not (index / "CURRENT").exists() and not any(index.glob("*.json")):
        print(f"building the demo index in {folder} (about 25 s) ...", file=sys.stderr)
        subprocess.run([*matchlens_command(), "demo", str(folder), "-q"], check=True, env=child_env())
    return index


def demo_queries(folder: Path) -> list[Path]:
    queries = sorted((folder / "queries").glob("*.jpg")) or sorted((folder / "collection").glob("*.jpg"))
    if len(queries) < 2:
        raise SystemExit(f"no query photos in {folder}/queries; pass --query and --query2")
    return queries


def time_cold(args: list[str], repeat: int) -> list[float]:
    """Wall seconds of ``matchlens ARGS`` as a fresh process, ``repeat`` times (must exit 0)."""
    command = [*matchlens_command(), *args]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env())
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"`matchlens {' '.join(args)}` exited {done.returncode}: "
                             f"{done.stderr.decode(errors='replace').strip()[-400:]}")
    return times


def time_warm(first: list[str], second: list[str], repeat: int) -> list[float]:
    """Seconds of ``main(second)`` in a process that has already run ``main(first)``."""
    import json

    done = subprocess.run([sys.executable, "-c", _WARM, json.dumps(first), json.dumps(second), str(repeat)],
                          capture_output=True, text=True, env=child_env())
    if done.returncode != 0:
        raise SystemExit(f"warm run of `matchlens {' '.join(second)}` failed: {done.stderr.strip()[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="an index folder (default: the demo index, built if needed)")
    parser.add_argument("--query", type=Path, help="query photo (default: the demo's first query)")
    parser.add_argument("--query2", type=Path, help="second query photo, for the warm search (default: the demo's second)")
    parser.add_argument("--demo", type=Path, default=Path("bench-out/startup-demo"),
                        help="where the demo index is (or is built) when --index is not given")
    parser.add_argument("--repeat", type=int, default=5, help="cold runs per command (default 5)")
    parser.add_argument("--warm-repeat", type=int, default=3, help="warm runs per command (default 3)")
    parser.add_argument("-k", type=int, default=5, help="results per search (default 5)")
    parser.add_argument("--runtime", help="set MATCHLENS_RUNTIME for every run (default: as the environment says)")
    args = parser.parse_args(argv)
    if args.runtime:
        os.environ["MATCHLENS_RUNTIME"] = args.runtime

    if args.index is None:
        index = ensure_demo(args.demo)
        queries = demo_queries(args.demo)
        query, query2 = args.query or queries[0], args.query2 or queries[1]
    else:
        if args.query is None:
            parser.error("--index needs --query")
        index, query, query2 = args.index, args.query, args.query2 or args.query

    k = ["-k", str(args.k)]
    commands = {
        "--help": (["--help"], ["--help"]),
        "info": (["info", str(index)], ["info", str(index)]),
        "search": (["search", str(index), str(query), *k], ["search", str(index), str(query2), *k]),
        "search --json": (["search", str(index), str(query), *k, "--json"],
                          ["search", str(index), str(query2), *k, "--json"]),
    }
    print(f"load average before: {load()}  (cores: {os.cpu_count()}; python {sys.version.split()[0]})")
    rows = []
    for label, (cold_args, warm_args) in commands.items():
        cold = time_cold(cold_args, args.repeat)
        warm = time_warm(cold_args, warm_args, args.warm_repeat)
        rows.append((label, cold, warm))
        print(f"  {label}: median {statistics.median(cold):.3f} s", file=sys.stderr)
    print(f"load average after: {load()}\n")
    print(f"index: {index}; query: {query}; warm query: {query2}; {args.repeat} cold runs, "
          f"{args.warm_repeat} warm runs each\n")
    print("| command | cold median s | cold min s | cold max s | warm s | budget s | within |")
    print("|---|---:|---:|---:|---:|---:|:-:|")
    for label, cold, warm in rows:
        median = statistics.median(cold)
        budget = BUDGETS[label]
        print(f"| `matchlens {label}` | {median:.3f} | {min(cold):.3f} | {max(cold):.3f} | "
              f"{statistics.median(warm):.3f} | {budget:.1f} | {'yes' if median <= budget else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
