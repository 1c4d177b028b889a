"""Running the app with uvicorn: ``matchlens serve DIR``.

SIGINT (Ctrl+C) and SIGTERM stop the server gracefully: it stops accepting connections, lets
running requests finish, closes the socket and returns normally (exit code 0).
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from matchlens.errors import MatchlensError

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_upload_bytes: int | None = None, max_pixels: int | None = None,
          on_ready: Callable[[str], None] | None = None, log_level: str = "warning",
          verifier: str | Path | None = None) -> None:
    """Serve the index at ``index_dir`` until SIGINT/SIGTERM; ``on_ready(url)`` is called once the
    socket listens. ``port`` 0 picks a free port; ``verifier`` is a checkpoint for the evidence view."""
    import uvicorn

    from matchlens.service.app import create_app

    options = {k: v for k, v in (("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels)) if v}
    sock = bind(host, port)  # first: a taken port fails at once, before the model loads
    try:
        app = create_app(index_dir, token=token, verifier=verifier, **options)
    except BaseException:
        sock.close()
        raise
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=10))
    url = f"http://{_url_host(host)}:{sock.getsockname()[1]}/"
    with _quiet_after_shutdown(), contextlib.closing(sock):
        if on_ready:
            on_ready(url)  # the socket already listens: connections wait in its backlog until the loop runs
        server.run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port), one-line error if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise MatchlensError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


@contextlib.contextmanager
def background(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread (tests, benchmarks); yields its base URL, stops it on exit."""
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="matchlens-server")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        if not server.started:
            raise RuntimeError("the background server did not start")
        yield f"http://{_url_host(host)}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def _quiet_after_shutdown() -> Iterator[None]:
    """After a graceful shutdown uvicorn re-raises the stop signal to the handlers it found, which
    by default kill the process (SIGTERM) or raise KeyboardInterrupt (SIGINT). Installing no-op
    handlers first makes a requested stop end as a normal return."""
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    try:
        for sig in _STOP_SIGNALS:
            signal.signal(sig, lambda *_: None)
    except ValueError:  # not the main thread (tests run the server in a thread): uvicorn skips signals too
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
