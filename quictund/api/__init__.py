"""The tunnel API: quic-tun's ``GET /tunnels`` plus reset, listeners, health and metrics.

``app`` is pure routing over an :class:`ApiProvider` the daemon implements, ``http`` is the
bounded h11 server that carries it on a UNIX socket or loopback TCP, ``views`` and ``rates``
shape the tunnel objects.  Re-exported here so the daemon imports one module.
"""

from quictund.api.app import ApiProvider, Request, Response, Router
from quictund.api.http import ApiServer, Limits, start_tcp, start_unix
from quictund.api.rates import RateMeter, format_rate
from quictund.api.views import TunnelView, view_of

__all__ = [
    "ApiProvider",
    "ApiServer",
    "Limits",
    "RateMeter",
    "Request",
    "Response",
    "Router",
    "TunnelView",
    "format_rate",
    "start_tcp",
    "start_unix",
    "view_of",
]
