"""``[metrics] listen-on``: a read-only TCP listener for Prometheus.

Prometheus cannot scrape a UNIX socket, and the full API on TCP can close tunnels and has no
authentication.  So this listener serves two read-only paths and nothing else:

1. ``GET /metrics`` (and ``HEAD``): the Prometheus text of the daemon -- or, with workers, of
   every worker merged by the supervisor (``workers.py``), exactly what the full API serves.
2. ``GET /healthz`` (and ``HEAD``): ``{"status": "ok"}`` with the full API's status code (200,
   or 503 when a worker does not answer) and nothing more: no listener names, no reload
   messages (they can name files), so it may face a monitoring network.
3. Any other method on those paths gets 405 with ``Allow: GET, HEAD``; any other path gets
   404, including the API's ``/tunnels`` and ``/listeners``.
4. It runs on the API's bounded HTTP server (``http.py``: head and cycle deadlines, sizes, 64
   connections shared per local UID or remote address, ``slots.py``), so a scraper that
   misbehaves costs what an API client can, and a local user cannot starve Prometheus.
5. Listening on a wildcard or non-loopback address works, with a WARNING: anyone who can reach
   it can read tunnel counts and listener names.  Bind 127.0.0.1 (the documented default
   ``127.0.0.1:9417``) or firewall the port.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import logging

from quictund.api.app import App, Request, Response, error_response, json_response
from quictund.api.http import ApiServer, Limits, start_tcp
from quictund.policy.addresses import parse_host_port

logger = logging.getLogger(__name__)

PATHS = ("/metrics", "/healthz")


class ReadOnly:
    """Forwards ``GET``/``HEAD`` of :data:`PATHS` to ``inner`` (the full API); refuses the rest."""

    def __init__(self, inner: App) -> None:
        self._inner = inner

    async def handle(self, request: Request) -> Response:
        path = request.target.split("?", 1)[0]
        if path not in PATHS:
            return error_response(404, f"no such path {path} (this listener serves {PATHS})")
        if request.method not in ("GET", "HEAD"):
            return error_response(
                405, "Please use GET request method", headers=(("Allow", "GET, HEAD"),)
            )
        # Only the method and the path reach the full API: no query, headers or body.
        answer = self._inner.handle(Request(request.method, path))
        response = await answer if inspect.isawaitable(answer) else answer
        if path == "/healthz":
            status = 200 if response.status == 200 else 503
            return json_response(status, {"status": _status_of(response)})
        return response


def _status_of(response: Response) -> str:
    try:
        status = json.loads(response.body).get("status")
    except (ValueError, AttributeError):
        status = None
    return status if isinstance(status, str) else "unavailable"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_warning(listen_on: str | None) -> str | None:
    """Rule 5's WARNING for ``[metrics] listen-on``, or ``None`` (also shown by ``check``)."""
    if listen_on is None or is_loopback(parse_host_port(listen_on, allow_port_zero=True).host):
        return None
    return (
        f"[metrics] listen-on {listen_on} is not a loopback address: anyone who can reach it "
        "can read the metrics (tunnel counts, listener names); bind 127.0.0.1 or firewall it"
    )


async def start_metrics(
    listen_on: str, inner: App, limits: Limits | None = None, *, warn: bool = True
) -> ApiServer:
    """Serve :class:`ReadOnly` over ``inner`` on TCP ``listen_on`` (rule 5: WARNING if exposed,
    unless ``warn=False``: the workers' supervisor has said it already, in its check).

    Raises ``ConfigError`` (one line) if the address cannot be bound.
    """
    hp = parse_host_port(listen_on, allow_port_zero=True)
    server = await start_tcp(
        hp.host, hp.port, ReadOnly(inner), allow_any=True, limits=limits, what="metrics"
    )
    warning = exposure_warning(listen_on) if warn else None
    if warning:
        logger.warning("%s", warning)
    return server
