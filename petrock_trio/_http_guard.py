"""Who may drive the HTTP API: the Host allowlist, the Origin check, binding beyond loopback.

A browser lets any page it shows send requests to a local server; what it does not let
a page choose is the ``Host`` header (the name in the page's own address) and the
``Origin`` header (the page's own origin). A page at ``http://evil.example:8000`` whose
name its owner re-points at 127.0.0.1 (DNS rebinding) therefore arrives with
``Host: evil.example:8000``: refusing names that are not this server's stops it before
anything runs. See docs/reliability.md, "Threat model".
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ._errors import ConfigurationError
from ._logging import get_logger

__all__ = [
    "LOOPBACK_HOSTS",
    "AllowedHosts",
    "HostGuard",
    "bound_hosts",
    "check_exposure",
    "is_loopback",
    "warn_exposure",
]

LOOPBACK_HOSTS: Final = ("localhost", "127.0.0.1", "[::1]")
"""Names always allowed in ``Host``, on any port."""

_log = get_logger("petrock_trio.http")

_NAME: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")
_PORT: Final = re.compile(r"[0-9]{1,5}")
_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - what a wildcard bind is


_MALFORMED: Final = -1


def _port(text: str | None) -> int | None:
    """The port of ``:port`` text: None for none, ``_MALFORMED`` when it is not one."""
    if text is None:
        return None
    if not _PORT.fullmatch(text) or int(text) > 65535:  # noqa: PLR2004 - the largest port
        return _MALFORMED
    return int(text)


def _authority(text: str) -> tuple[str, int | None] | None:
    """``name[:port]`` or ``[v6][:port]``, lower-cased, as (name, port); None if malformed."""
    text = text.lower()
    if text.startswith("["):
        inner, bracket, rest = text[1:].partition("]")
        try:
            name = f"[{ipaddress.IPv6Address(inner).compressed}]"
        except ValueError:
            return None
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = _port(rest[1:] if rest else None)
    else:
        name, colon, after = text.partition(":")
        # One trailing dot names the same host ("localhost." is localhost).
        name = name.removesuffix(".")
        port = _port(after if colon else None) if _NAME.fullmatch(name) else _MALFORMED
    return None if port == _MALFORMED else (name, port)


class AllowedHosts:
    """The names this server answers to: loopback's, and those the operator adds.

    An entry is a host name or address, with or without ``:port`` (a bare IPv6
    address is accepted and bracketed); without a port it allows every port. ``"*"``
    allows any ``Host`` (and then an ``Origin`` must be the request's own).
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.any = False
        self._names: set[str] = set()
        self._pinned: set[tuple[str, int]] = set()
        self.entries: list[str] = []
        for entry in (*LOOPBACK_HOSTS, *entries):
            self.add(entry)

    def add(self, entry: str) -> None:
        text = entry.strip()
        if text == "*":
            self.any = True
            self.entries.append(text)
            return
        with contextlib.suppress(ValueError):  # a bare IPv6 address
            text = f"[{ipaddress.IPv6Address(text).compressed}]"
        parsed = _authority(text)
        if parsed is None:
            raise ConfigurationError(
                f"allowed host {entry!r} is not a host name or address with an optional :port"
            )
        name, port = parsed
        if port is None:
            self._names.add(name)
        else:
            self._pinned.add((name, port))
        self.entries.append(name if port is None else f"{name}:{port}")

    def matches(self, authority: str, default_port: int) -> bool:
        """Whether ``authority`` (a Host header, an origin's host) is in the list."""
        parsed = _authority(authority)
        if parsed is None:
            return False
        name, port = parsed
        return name in self._names or (name, default_port if port is None else port) in self._pinned

    def allows_host(self, host: str | None, scheme: str) -> bool:
        if self.any:
            return True
        return host is not None and self.matches(host, _default_port(scheme))

    def allows_origin(self, origin: str, host: str | None) -> bool:
        """Whether a browser page at ``origin`` may change something through this server."""
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        if parts.scheme not in {"http", "https"} or not parts.netloc or "@" in parts.netloc:
            return False
        if parts.path or parts.query or parts.fragment:
            return False
        default = _default_port(parts.scheme)
        if not self.any:
            return self.matches(parts.netloc, default)
        # Any Host is allowed: only the page the server itself answered for may change things.
        own, theirs = _authority(host or ""), _authority(parts.netloc)
        if own is None or theirs is None:
            return False
        return (own[0], own[1] or default) == (theirs[0], theirs[1] or default)

    def describe(self) -> str:
        return "any host" if self.any else ", ".join(self.entries)


def _default_port(scheme: str) -> int:
    return 443 if scheme in {"https", "wss"} else 80


class HostGuard:
    """ASGI middleware answering 403 ``HostNotAllowed`` to requests for other names."""

    def __init__(self, app: ASGIApp, hosts: AllowedHosts) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        host = values[0] if len(values) == 1 else None
        if self.hosts.allows_host(host, scope.get("scheme", "http")):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        named = "no Host header" if not values else f"Host {', '.join(values)!r}"
        message = (
            f"{named} is not allowed (this server answers to {self.hosts.describe()}); "
            "if the name is this server's, allow it with --allowed-host or allowed_hosts="
        )
        body = orjson.dumps({"error": {"type": "HostNotAllowed", "message": message}})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on this machine's loopback interface only."""
    if host.lower().removesuffix(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, *, allow_no_token: bool) -> str | None:
    """Refuse to serve beyond loopback with no token unless allowed; the warning to log.

    Raises :class:`ConfigurationError` for a non-loopback ``host`` with no ``token``
    and no ``allow_no_token``. Returns the event of the warning to log once serving
    (None on loopback).
    """
    if is_loopback(host):
        return None
    if token is None and not allow_no_token:
        raise ConfigurationError(
            f"refusing to serve on {host or 'every interface'!r} without a token: anyone "
            "who can reach it could submit commands; give a token, or allow_no_token=True "
            "to serve it open anyway"
        )
    return "petrock.http.exposed" if token is not None else "petrock.http.insecure"


def warn_exposure(event: str, url: str) -> None:
    if event == "petrock.http.exposed":
        _log.warning(
            "petrock.http.exposed",
            url=url,
            risk="reads (inspect, messages with their payloads, metrics, dead letters) are "
            "open to anyone who can reach this address; only changes need the token",
        )
    else:
        _log.warning(
            "petrock.http.insecure",
            url=url,
            risk="NO TOKEN: anyone who can reach this address can submit commands and "
            "re-drive dead letters, and read everything",
        )


def bound_hosts(host: str) -> list[str]:
    """The names a client reaching ``host`` (not loopback) may put in ``Host``.

    The address itself; for a wildcard bind also this machine's host name, its fully
    qualified name and the addresses it resolves to. Blocks on name resolution: call
    it from a thread. Other names (a DNS name, a proxy's) must be allowed explicitly.
    """
    names = [f"[{host}]" if ":" in host else host] if host else []
    if host in _WILDCARDS:
        machine = socket.gethostname()
        names += [machine, socket.getfqdn()]
        try:
            infos = socket.getaddrinfo(machine, None)
        except OSError:
            infos = []
        for info in infos:
            address = str(info[4][0])
            names.append(f"[{address}]" if ":" in address else address)
    return [name for name in dict.fromkeys(names) if _authority(name) is not None]
