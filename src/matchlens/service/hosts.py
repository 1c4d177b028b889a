"""The Host allow-list: a server answers only for the names it is reached by (DNS rebinding).

A web page on ``attacker.example`` can re-point its own name at 127.0.0.1 and then script
requests to a service on the visitor's loopback interface: the browser sees one origin, but every
request still carries ``Host: attacker.example``. Refusing any Host that is not one of this
server's own names closes that door, whatever the socket it came in on.

Allowed by default: the bound host and, when it is a loopback address, ``localhost``,
``127.0.0.1`` and ``[::1]``. ``matchlens serve --allow-host NAME`` (``allowed_hosts=`` in
:func:`matchlens.service.app.create_app`) adds names; ``*`` turns the check off, ``*.example.org``
allows the subdomains of example.org. An entry without a port matches the name alone and the name
with the server's own port; ``NAME:PORT`` matches exactly that (a proxy or a port mapping).
Refused requests get 400 with a one-line JSON ``detail`` and never reach a handler.

(Starlette's ``TrustedHostMiddleware`` is not used: it answers in plain text, ignores the port and
cuts ``[::1]:8000`` at its first colon.)
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Iterable

from matchlens.errors import ConfigError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_NAME = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """Whether ``host`` is an any-address (``0.0.0.0``, ``::``): no client sends it as a Host."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def default_allowed_hosts(bound_host: str) -> list[str]:
    """The names a server bound to ``bound_host`` answers for: that host, plus the loopback names
    when it is a loopback address."""
    own = normalise(bound_host)
    if is_loopback(bound_host):
        return [own, *(name for name in LOOPBACK_NAMES if name != own)]
    return [own]


def normalise(entry: str) -> str:
    """An allow-list entry in the form Host headers are compared with: lower case, IPv6 literals
    in brackets (``::1`` → ``[::1]``); ConfigError (one line) if it is not a host name."""
    text = entry.strip().lower()
    if text == "*":
        return text
    try:
        if ":" in text and not text.startswith("["):
            return f"[{ipaddress.IPv6Address(text)}]"
    except ValueError:
        pass  # NAME:PORT
    name, port = split_host(text)
    if name is None or not _NAME.fullmatch(name) or (port is not None and int(port) > 65535):
        raise ConfigError(f"allowed host {entry!r} is not a host name (NAME, NAME:PORT, [IPv6], *.DOMAIN or *)")
    return text


def split_host(value: str) -> tuple[str | None, str | None]:
    """``(name, port)`` of a Host header value (port None when absent); ``(None, None)`` if malformed."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None, None
        name, rest = value[: end + 1], value[end + 1:]
        if not rest:
            return name, None
        if not rest.startswith(":") or not _PORT.fullmatch(rest[1:]):
            return None, None
        return name, rest[1:]
    name, colon, port = value.partition(":")
    if not colon:
        return name, None
    if not _PORT.fullmatch(port):
        return None, None
    return name, port


class HostAllowList:
    """ASGI middleware: 400 (JSON, one line, ``Connection: close``) for a request whose Host header
    is missing, repeated or not in the allow-list (see the module docstring)."""

    def __init__(self, app, allowed: Iterable[str]) -> None:
        self.app = app
        entries = list(dict.fromkeys(normalise(entry) for entry in allowed))
        self.any = "*" in entries
        self.entries = entries
        self.exact = {e for e in entries if e != "*" and not e.startswith("*.")}
        self.suffixes = tuple(e[1:] for e in entries if e.startswith("*."))  # ".example.org"

    def allows(self, value: str, server_port: int | None) -> bool:
        """Whether Host ``value`` names this server (``server_port``: the port it listens on)."""
        if self.any:
            return True
        value = value.lower()
        name, port = split_host(value)
        if name is None:
            return False
        if value in self.exact:  # NAME:PORT entries, and names sent without a port
            return True
        if port is not None and server_port is not None and int(port) != server_port:
            return False
        if name in self.exact:
            return True
        return bool(self.suffixes) and name.endswith(self.suffixes) and bool(_NAME.fullmatch(name))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = [value for key, value in scope.get("headers") or [] if key == b"host"]
        server_port = (scope.get("server") or (None, None))[1]
        value = hosts[0].decode("latin-1") if len(hosts) == 1 else None
        if value is not None and self.allows(value, server_port):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if not hosts:
            detail = "the request has no Host header"
        elif len(hosts) > 1:
            detail = "the request has more than one Host header"
        else:
            detail = (f"host {hosts[0].decode('latin-1')[:100]!r} is not allowed: this server answers for "
                      f"{', '.join(self.entries)} (matchlens serve --allow-host NAME adds one)")
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"x-content-type-options", b"nosniff"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
