"""Routing and JSON for the tunnel API: pure request -> response, no sockets.

Kept apart from ``http.py`` so every route can be tested without I/O and so the HTTP layer
knows nothing about tunnels.  The daemon supplies an :class:`ApiProvider`; the router only
reads snapshots from it and asks it to close a tunnel, so a slow or broken API client can
never block or corrupt the data plane.

Rules:

1. ``GET /tunnels`` answers quic-tun's JSON array (``[]`` when empty, where quic-tun says
   ``null``) with ``Content-Type: application/json`` (quic-tun sends none).
2. ``HEAD`` is accepted wherever ``GET`` is; ``http.py`` drops the body and keeps the headers.
3. Any other method gets 405, quic-tun's ``{"message":"Please use GET request method"}`` text
   and an ``Allow`` header (``GET, HEAD``; ``GET, HEAD, DELETE`` on ``/tunnels/{uuid}``);
   unknown paths get 404 with a JSON ``message`` (quic-tun sends Go's plain-text
   ``404 page not found``); a target that is not a path gets 400.
4. ``handle`` never raises: a provider exception becomes a logged 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

from quictund.api.openapi import openapi_document
from quictund.api.views import TunnelView

logger = logging.getLogger(__name__)

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Request:
    """One complete HTTP request, as ``http.py`` hands it to the router."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    """What the router answers; ``http.py`` adds framing (Content-Length, Connection)."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON
    headers: tuple[tuple[str, str], ...] = ()


class App(Protocol):
    """What ``http.py`` serves: the ``Router`` answers at once; a proxy may await."""

    def handle(self, request: Request) -> Response | Awaitable[Response]: ...


class ApiProvider(Protocol):
    """What the daemon exposes to the API.  Every method is synchronous and cheap."""

    def tunnels(self) -> list[TunnelView]:
        """A snapshot of the live tunnels."""
        ...

    def close_tunnel(self, uuid: str) -> bool:
        """Reset that one tunnel; ``False`` if no tunnel has this uuid."""
        ...

    def listeners(self) -> list[dict[str, object]]:
        """The listeners, already JSON-ready."""
        ...

    def health(self) -> dict[str, object]:
        """A small JSON-ready health summary."""
        ...

    def metrics(self) -> tuple[bytes, str]:
        """``(body, content type)``, from ``prometheus_client.generate_latest``."""
        ...


def json_response(
    status: int, payload: object, *, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(status, body, JSON, headers)


def error_response(
    status: int, message: str, *, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """The one error shape: ``{"message": "..."}``."""
    return json_response(status, {"message": message}, headers=headers)


class Router:
    """Maps requests to the provider.  ``handle`` is synchronous and never raises."""

    def __init__(self, provider: ApiProvider) -> None:
        self._provider = provider
        openapi = json.dumps(openapi_document(), separators=(",", ":")).encode()
        # Exact paths that only answer GET (and HEAD).
        self._fixed: dict[str, Callable[[], Response]] = {
            "/tunnels": self._list_tunnels,
            "/listeners": lambda: json_response(200, provider.listeners()),
            "/healthz": lambda: json_response(200, provider.health()),
            "/metrics": self._metrics,
            "/openapi.json": lambda: Response(200, openapi, JSON),
        }

    # public API

    def handle(self, request: Request) -> Response:
        try:
            return self._dispatch(request)
        except Exception:
            logger.exception("API %s %s failed", request.method, request.target)
            return error_response(500, "internal error")

    # private

    def _dispatch(self, request: Request) -> Response:
        path = _path_of(request.target)
        if path is None:
            return error_response(400, "bad request target")
        method = "GET" if request.method == "HEAD" else request.method
        handler = self._fixed.get(path)
        if handler is not None:
            if method != "GET":
                return _not_allowed("GET", ("GET", "HEAD"))
            return handler()
        prefix = "/tunnels/"
        if path.startswith(prefix) and "/" not in path[len(prefix) :] and path != prefix:
            return self._one_tunnel(method, path[len(prefix) :])
        return error_response(404, f"no such path {path}")

    def _list_tunnels(self) -> Response:
        return json_response(200, [view.to_json() for view in self._provider.tunnels()])

    def _one_tunnel(self, method: str, uuid: str) -> Response:
        if method == "GET":
            for view in self._provider.tunnels():
                if view.uuid == uuid:
                    return json_response(200, view.to_json())
            return error_response(404, f"no tunnel {uuid}")
        if method == "DELETE":
            if self._provider.close_tunnel(uuid):
                return Response(204, b"", None)
            return error_response(404, f"no tunnel {uuid}")
        return _not_allowed("GET or DELETE", ("GET", "HEAD", "DELETE"))

    def _metrics(self) -> Response:
        body, content_type = self._provider.metrics()
        return Response(200, body, content_type)


def _not_allowed(verbs: str, allow: tuple[str, ...]) -> Response:
    return error_response(
        405, f"Please use {verbs} request method", headers=(("Allow", ", ".join(allow)),)
    )


def _path_of(target: str) -> str | None:
    """The decoded path of an origin-form or absolute-form target; ``None`` if unusable."""
    if not target.startswith("/"):
        if not target.lower().startswith(("http://", "https://")):
            return None
        target = urlsplit(target).path or "/"
    path = target.split("?", 1)[0].split("#", 1)[0]
    if "%" not in path:
        return path
    try:
        return unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None
