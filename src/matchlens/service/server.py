"""Running the app with uvicorn: ``matchlens serve DIR``.

SIGINT (Ctrl+C) and SIGTERM stop the server gracefully: it stops accepting connections, lets
running requests finish, closes the socket and returns normally (exit code 0).

Slow clients (slowloris) are dropped, each on its own timer in the event loop, so they never
hold up other clients. What covers what:

- *Request heads*: uvicorn has no timeout for them (its keep-alive timer stops at the first
  byte of a request, and ``h11_max_incomplete_event_size`` bounds a head's size, not its pace),
  so the server runs :class:`GuardedH11Protocol`, uvicorn's h11 protocol with a deadline: a head
  must be complete ``request_timeout`` seconds after the connection opened or after the first
  byte of the next request on a kept-alive connection, else the connection gets 408 (when part of
  a head came) and is closed. A connection that never sends anything is closed then too.
- *Request bodies the app reads*: :class:`~matchlens.service.uploads.BodyDeadline` (in the app)
  gives the whole body ``request_timeout`` seconds from the end of the head, else 408 JSON and
  the connection is closed.
- *Bodies nobody reads* (the app answered first, e.g. 401, 404, 405): uvicorn would keep reading
  and dropping them for ever; :class:`GuardedH11Protocol` closes the connection if the rest has
  not arrived ``request_timeout`` seconds after the response.
- *Idle kept-alive connections*: uvicorn's ``timeout_keep_alive`` (``keep_alive_timeout``, 5 s).
- *Not covered*: responses a client reads slowly (the transport's write buffer applies flow
  control, but there is no deadline); a flood of connections (no connection limit: use a
  firewall or a reverse proxy); TLS handshakes (the server speaks plain HTTP). Only the h11
  protocol is guarded: the server always runs it, even where httptools is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from matchlens.errors import MatchlensError
from matchlens.service.hosts import is_loopback
from matchlens.service.uploads import DEFAULT_REQUEST_TIMEOUT

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DEFAULT_KEEP_ALIVE_TIMEOUT = 5
__all__ = ["GuardedH11Protocol", "background", "bind", "is_loopback", "serve"]


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          max_upload_bytes: int | None = None, max_pixels: int | None = None,
          on_ready: Callable[[str], None] | None = None, log_level: str = "warning",
          verifier: str | Path | None = None, allowed_hosts: Iterable[str] = (),
          request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
          keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT, map_dir: str | Path | None = None,
          composer: str | Path | None = None, text_model: str | Path | None = None,
          identify: str | None = None, relation_model: str | Path | None = None) -> None:
    """Serve the index at ``index_dir`` until SIGINT/SIGTERM; ``on_ready(url)`` is called once the
    socket listens. ``port`` 0 picks a free port; ``verifier`` is a checkpoint for the evidence view.
    ``allowed_hosts`` extends the Host allow-list (see :mod:`matchlens.service.hosts`);
    ``request_timeout`` (seconds for a request head, then for its body; None: none) and
    ``keep_alive_timeout`` (seconds an idle connection stays open) drop slow clients. ``map_dir``
    (a ``matchlens map`` folder built with this index) enables ``POST /localize``."""
    from matchlens.service.app import create_app

    options: dict[str, Any] = {k: v for k, v in (("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels)) if v}
    sock = bind(host, port)  # first: a taken port fails at once, before the model loads
    try:
        app = create_app(index_dir, token=token, verifier=verifier, host=host, allowed_hosts=allowed_hosts,
                         request_timeout=request_timeout, map_dir=map_dir, composer=composer, text_model=text_model,
                         identify=identify, relation_model=relation_model, **options)
    except BaseException:
        sock.close()
        raise
    server = uvicorn.Server(_config(app, request_timeout, keep_alive_timeout, log_level=log_level,
                                    timeout_graceful_shutdown=10))
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
def background(app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0, *,
               request_timeout: float | None = None,
               keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread (tests, benchmarks); yields its base URL, stops it on exit.
    ``request_timeout`` (the head deadline) defaults to the app's own request timeout."""
    if request_timeout is None:
        settings = getattr(app.state, "settings", None)
        request_timeout = getattr(settings, "request_timeout", DEFAULT_REQUEST_TIMEOUT)
    sock = bind(host, port)
    server = uvicorn.Server(_config(app, request_timeout, keep_alive_timeout, log_level="warning"))
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


def _config(app, request_timeout: float | None, keep_alive_timeout: int, **options) -> uvicorn.Config:
    http = GuardedH11Protocol.with_timeout(request_timeout) if request_timeout else "h11"
    return uvicorn.Config(app, http=http, access_log=False, timeout_keep_alive=keep_alive_timeout, **options)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline whenever the server waits on the client alone: for
    a request head (from the connection or from the first byte of the next request) and for the
    rest of a body after the response was sent. The deadline is set once per wait and never
    extended by more bytes. See the module docstring for what else covers slow clients."""

    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    @classmethod
    def with_timeout(cls, seconds: float) -> type[GuardedH11Protocol]:
        """This protocol with a ``seconds`` deadline (uvicorn takes a class, not an instance)."""
        return type(cls.__name__, (cls,), {"request_timeout": float(seconds)})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: type | None = None  # the h11 state of the client the deadline is for

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY:  # answered before its body came: nobody reads the rest
            self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _watch(self) -> None:
        state = self.conn.their_state
        cycle_done = self.cycle is None or self.cycle.response_complete
        waiting = None
        if not self.transport.is_closing() and (state is h11.IDLE or (state is h11.SEND_BODY and cycle_done)):
            waiting = state
        if waiting is not self._waiting_for:
            self._cancel()
            if waiting is not None:
                self._deadline = self.loop.call_later(self.request_timeout, self._expired)
                self._waiting_for = waiting

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._waiting_for = None, None

    def _expired(self) -> None:
        self._deadline, self._waiting_for = None, None
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a head came
            self.transport.write(_head_timeout_response(self.request_timeout))
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def _head_timeout_response(seconds: float) -> bytes:
    body = json.dumps({"detail": f"the request head came too slowly: it must arrive within {seconds:g} s"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n" % len(body)) + body


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
