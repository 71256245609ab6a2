"""The OpenAPI 3.0 description of the tunnel API, served at ``GET /openapi.json``.

Written by hand (no framework generates it) and kept honest by tests: every response the test
suite receives is validated against this document, and the tunnel schema's property names must
equal ``views.TUNNEL_KEYS``.  Change a route in ``app.py`` and this file in the same commit.
"""

from __future__ import annotations

from typing import Any

from quictund import __version__

_REF = "#/components/schemas/"
_ADDR = "an address as `ip:port`, `[ipv6]:port` or a UNIX socket path"


def _json(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF + schema_name}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("Error")}


def _tunnel_schema(endpoint: str) -> dict[str, Any]:
    """One endpoint's tunnel object; the two differ only in which app address they carry."""
    app_addr = "clientAppAddr" if endpoint == "client" else "serverAppAddr"
    app_desc = (
        "address of the client application connected to this endpoint"
        if endpoint == "client"
        else "address this endpoint dialled for the server application"
    )
    rate = {"type": "string", "pattern": r"^[0-9]+\.[0-9]{2} kB/s$"}
    total = {"type": "integer", "format": "int64", "minimum": 0}
    properties: dict[str, Any] = {
        "uuid": {"type": "string", "format": "uuid", "description": "random per tunnel"},
        "streamId": {
            "type": "integer",
            "format": "int64",
            "minimum": -1,
            "description": "QUIC stream id; -1 before the stream is opened",
        },
        "endpoint": {"type": "string", "enum": [endpoint]},
        app_addr: {"type": "string", "description": f"{app_desc}: {_ADDR}"},
        "remoteEndpointAddr": {"type": "string", "description": "the peer endpoint's UDP address"},
        "createdAt": {"type": "string", "format": "date-time", "description": "RFC 3339"},
        "serverTotalBytes": {**total, "description": "bytes sent by the server application"},
        "clientTotalBytes": {**total, "description": "bytes sent by the client application"},
        "serverSendRate": {**rate, "description": "server app bytes in the last second / 1024"},
        "clientSendRate": {**rate, "description": "client app bytes in the last second / 1024"},
        "protocol": {"type": "string", "description": '"" when unknown, or "spice"'},
        "protocolProperties": {"$ref": _REF + "ProtocolProperties"},
        "listener": {"type": "string", "description": "name of the listener (quictund only)"},
        "clientIdentity": {
            "type": "string",
            "description": "server side: the client certificate's subject and alternative "
            'names when client certificates are required, else ""; client side: "" '
            "(quictund only)",
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(properties),
        "properties": properties,
    }


def _schemas() -> dict[str, Any]:
    return {
        "Tunnel": {
            "oneOf": [{"$ref": _REF + "ClientTunnel"}, {"$ref": _REF + "ServerTunnel"}],
            "discriminator": {
                "propertyName": "endpoint",
                "mapping": {"client": _REF + "ClientTunnel", "server": _REF + "ServerTunnel"},
            },
        },
        "ClientTunnel": _tunnel_schema("client"),
        "ServerTunnel": _tunnel_schema("server"),
        "ProtocolProperties": {
            "type": "object",
            "nullable": True,
            "description": "what the traffic classifier found; null until it found something",
            "properties": {
                name: {"type": "string"}
                for name in ("version", "sessionId", "channelType", "serverName", "serverUUID")
            },
            "additionalProperties": True,
        },
        "TunnelList": {"type": "array", "items": {"$ref": _REF + "Tunnel"}},
        "ListenerList": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": True},
        },
        "Health": {"type": "object", "additionalProperties": True},
        "Error": {
            "type": "object",
            "additionalProperties": False,
            "required": ["message"],
            "properties": {"message": {"type": "string"}},
        },
    }


def _get(summary: str, ok: dict[str, Any], *extra: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """A GET operation and its HEAD twin (same status codes and headers, no body)."""
    responses = {"200": ok, **dict(extra)}
    head = {
        code: {k: v for k, v in resp.items() if k != "content"} for code, resp in responses.items()
    }
    return {
        "get": {"summary": summary, "responses": responses},
        "head": {"summary": f"{summary} (headers only)", "responses": head},
    }


_UUID_PARAM = {
    "name": "uuid",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the tunnel's `uuid`",
}

_GET_ONLY = "Other methods get 405 `Please use GET request method` with `Allow: GET, HEAD`."


def openapi_document() -> dict[str, Any]:
    """The whole document, as a JSON-ready dict."""
    no_tunnel = ("404", _error("no tunnel with this uuid"))
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "quictund tunnel API",
            "version": __version__,
            "description": (
                "quic-tun compatible `GET /tunnels`, plus tunnel reset, listeners, health, "
                'Prometheus metrics.  Every error body is `{"message": ...}`.  Server-wide: '
                "400 malformed request, 405 wrong method (with `Allow`), 408 request too slow, "
                "413 body too large, 431 head too large, 503 too many connections, "
                "505 HTTP version other than 1.0/1.1."
            ),
        },
        "paths": {
            "/tunnels": {
                "description": _GET_ONLY,
                **_get(
                    "Active tunnels (`[]` when none)",
                    {"description": "the tunnels", "content": _json("TunnelList")},
                ),
            },
            "/tunnels/{uuid}": {
                "description": "Other methods get 405 with `Allow: GET, HEAD, DELETE`.",
                "parameters": [_UUID_PARAM],
                **_get(
                    "One tunnel",
                    {"description": "the tunnel", "content": _json("Tunnel")},
                    no_tunnel,
                ),
                "delete": {
                    "summary": "Reset this tunnel (both directions are aborted)",
                    "responses": {"204": {"description": "reset"}, "404": no_tunnel[1]},
                },
            },
            "/listeners": {
                "description": _GET_ONLY,
                **_get("Listeners", {"description": "listeners", "content": _json("ListenerList")}),
            },
            "/healthz": {
                "description": _GET_ONLY,
                **_get("Health summary", {"description": "alive", "content": _json("Health")}),
            },
            "/metrics": {
                "description": _GET_ONLY,
                **_get(
                    "Prometheus metrics",
                    {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                ),
            },
            "/openapi.json": {
                "description": _GET_ONLY,
                **_get(
                    "This document",
                    {
                        "description": "OpenAPI 3.0",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                ),
            },
        },
        "components": {"schemas": _schemas()},
    }
