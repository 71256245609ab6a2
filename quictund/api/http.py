"""The API's HTTP/1.1 server: h11 over asyncio streams, on a UNIX socket or loopback TCP.

h11 does the parsing (no hand-written parser to fuzz); this module only adds the bounds a
daemon needs so that an API client can cost it at most a few buffers and never a crash:

1. The request head is at most ``max_head_bytes`` (h11 ``max_incomplete_event_size``: 431) and
   the body at most ``max_body_bytes`` (413, from Content-Length before reading any of it).
2. The request head (request line and headers) must have arrived in full within
   ``head_timeout_s`` of the start of its cycle (the connection's accept, or the end of the
   previous response) -- a total for the head, not a per-byte timeout, so sending it a byte at a
   time buys nothing -- and each request/response cycle, including draining the response, must
   finish within ``request_timeout_s``.  A client that has sent part of a request by then gets
   408; an idle one is just closed; both are disconnected.
3. At most ``max_connections`` connections are served at once, shared between local users as
   ``slots.py`` rules (``max_per_peer`` per UID, ``reserved_slots`` kept for root and the
   daemon's own UID); a connection over its share gets 503 and is closed without reading.
4. A malformed request gets 400 ``{"message": ...}`` (h11's ``error_status_hint``; 505 for an
   HTTP version other than 1.0/1.1) and the connection is closed.  Nothing a client sends
   makes an exception escape a connection task.
5. Keep-alive and pipelining follow h11: the connection is reused when both sides are DONE.

The API runs in the daemon's loop but only ever reads snapshots, so it is low-volume and the
streams API (one task per connection) is simpler than a Protocol here.  A UNIX socket file is
replaced only if nothing accepts on it, is chmod'ed (and optionally chgrp'ed) right after bind,
and is removed on close only if it is still ours (same inode).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import os
from dataclasses import dataclass
from http import HTTPStatus

import h11

from quictund.api.app import App, Request, Response, error_response
from quictund.api.peers import peer_of
from quictund.api.slots import SlotPolicy, Slots
from quictund.errors import ConfigError, os_reason
from quictund.tunnel.groups import gid_of, give_to_group
from quictund.tunnel.unixsock import remove_stale

logger = logging.getLogger(__name__)

_READ_CHUNK = 16 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one API client may cost (see the module rules)."""

    max_head_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    head_timeout_s: float = 5.0
    request_timeout_s: float = 10.0
    max_connections: int = 64
    max_per_peer: int = 8
    reserved_slots: int = 4


class ApiServer:
    """A listening API socket and its live connections."""

    def __init__(self, app: App, limits: Limits) -> None:
        self._app = app
        self._limits = limits
        self._slots = Slots(
            SlotPolicy(limits.max_connections, limits.max_per_peer, limits.reserved_slots)
        )
        self._server: asyncio.Server | None = None
        # Live connections.  close() aborts their transports rather than cancelling the tasks:
        # on 3.11 a cancelled start_server callback task makes asyncio log a spurious error.
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._unix_path: str | None = None
        self._unix_inode: int | None = None
        self._closing = False

    # public API

    @property
    def address(self) -> str:
        """The UNIX socket path, or ``host:port`` (``[v6]:port``) actually bound."""
        if self._unix_path is not None:
            return self._unix_path
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        """Stop accepting, drop live connections, remove our UNIX socket file."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in self._conns.values():
            writer.transport.abort()  # the connection task sees EOF or a reset and ends
        if self._unix_path is not None and self._unix_inode is not None:
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self._unix_path).st_ino == self._unix_inode:
                    os.unlink(self._unix_path)
            self._unix_inode = None

    async def wait_closed(self) -> None:
        """Wait until ``close()`` has taken effect for every connection."""
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # private

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = peer_of(writer.get_extra_info("socket"))
        refused = "shutting down" if self._closing else self._slots.acquire(peer)
        if refused is not None:
            logger.debug("API connection from %s refused: %s", peer, refused)
            _refuse(writer, refused)
            return
        self._conns[task] = writer
        try:
            await _Connection(self._app, self._limits, reader, writer).run()
        except (ConnectionError, OSError) as exc:
            logger.debug("API connection dropped: %s", exc)
        except Exception:
            logger.exception("API connection failed")
        finally:
            del self._conns[task]
            self._slots.release(peer)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read gets no more of our time
            else:
                writer.close()


def _refuse(writer: asyncio.StreamWriter, why: str) -> None:
    writer.write(_closing_error(h11.Connection(h11.SERVER), 503, why))
    writer.close()


def _closing_error(conn: h11.Connection, status: int, message: str) -> bytes:
    """An error response with ``Connection: close``, framed by ``conn``."""
    body = error_response(status, message).body
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    head = h11.Response(status_code=status, headers=headers, reason=_reason(status))
    return (conn.send(head) or b"") + (conn.send(h11.Data(data=body)) or b"")


class _Connection:
    """One client connection: request/response cycles until close, error or timeout."""

    def __init__(
        self,
        app: App,
        limits: Limits,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._app = app
        self._limits = limits
        self._reader = reader
        self._writer = writer
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head_bytes)
        self._got_bytes = False  # in this cycle
        self._deadline: asyncio.Timeout  # of this cycle: for the head, then for the rest
        self._cycle_end = 0.0  # when this cycle must be over (rule 2)
        self._head_request = False  # in this cycle: h11 frames the response without a body

    async def run(self) -> None:
        limits = self._limits
        loop = asyncio.get_running_loop()
        while True:
            self._got_bytes = bool(self._conn.trailing_data[0])
            self._head_request = False
            start = loop.time()
            self._cycle_end = start + limits.request_timeout_s
            try:
                # Rule 2: the head's deadline first; once the head is in, the cycle's.
                async with asyncio.timeout_at(
                    start + min(limits.head_timeout_s, limits.request_timeout_s)
                ) as self._deadline:
                    if not await self._cycle():
                        return
            except TimeoutError:
                self._timed_out()
                return
            self._conn.start_next_cycle()

    # private

    async def _cycle(self) -> bool:
        """Serve one request; ``True`` if the connection can take another."""
        request = await self._read_request()
        if request is None:
            return False
        if isinstance(request, Response):
            await self._send(request, close=True)
            return False
        answer = self._app.handle(request)
        # A proxying app (the workers' supervisor) answers asynchronously.
        response = await answer if inspect.isawaitable(answer) else answer
        logger.debug("API %s %s -> %d", request.method, request.target, response.status)
        await self._send(response, close=False)
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE

    async def _read_request(self) -> Request | Response | None:
        """The next full request, an error response to send before closing, or ``None`` (EOF)."""
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                return error_response(exc.error_status_hint, f"bad request: {exc}")
            if event is h11.NEED_DATA:
                if self._conn.they_are_waiting_for_100_continue:
                    await self._write(
                        self._conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                data = await self._reader.read(_READ_CHUNK)
                self._got_bytes = self._got_bytes or bool(data)
                self._conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
                self._deadline.reschedule(self._cycle_end)
                self._head_request = event.method == b"HEAD"
                if event.http_version not in (b"1.0", b"1.1"):
                    return error_response(505, "only HTTP/1.0 and HTTP/1.1 are supported")
                length = _content_length(event)
                if length is not None and length > self._limits.max_body_bytes:
                    return error_response(413, "request body too large")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._limits.max_body_bytes:
                    return error_response(413, "request body too large")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request(
                    method=head.method.decode("ascii"),
                    target=head.target.decode("ascii", "replace"),
                    headers=tuple(
                        (k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers
                    ),
                    body=bytes(body),
                )
            else:  # ConnectionClosed (or PAUSED, which cannot happen before EndOfMessage)
                return None

    async def _send(self, response: Response, *, close: bool) -> None:
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # h11 cannot frame a response now (e.g. the peer is gone mid-request)
        headers = list(response.headers)
        if response.status not in (204, 304):
            if response.content_type is not None:
                headers.append(("Content-Type", response.content_type))
            headers.append(("Content-Length", str(len(response.body))))
        if close:
            headers.append(("Connection", "close"))
        data = (
            self._conn.send(
                h11.Response(
                    status_code=response.status, headers=headers, reason=_reason(response.status)
                )
            )
            or b""
        )
        if response.body and not self._head_request and response.status not in (204, 304):
            data += self._conn.send(h11.Data(data=response.body)) or b""
        data += self._conn.send(h11.EndOfMessage()) or b""
        await self._write(data)

    async def _write(self, data: bytes | None) -> None:
        if data:
            self._writer.write(data)
            await self._writer.drain()

    def _timed_out(self) -> None:
        """Rule 2: 408 to a client that was mid-request, then the caller disconnects it."""
        if self._got_bytes and self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError):
                self._writer.write(_closing_error(self._conn, 408, "request not received in time"))
        logger.debug("API client too slow; disconnecting")


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            return int(value)  # h11 has validated it
    return None


async def start_unix(
    path: str,
    app: App,
    *,
    mode: int = 0o660,
    group: str | None = None,
    limits: Limits | None = None,
) -> ApiServer:
    """Serve ``app`` on the UNIX socket ``path`` (see the module docstring for the file rules).

    Raises :class:`ConfigError` if another process listens on ``path``, if ``path`` exists and
    is not a socket, or if ``group`` does not exist or cannot be applied.
    """
    if group is not None:
        gid_of(group, f"api socket {path}: [api] group")  # unknown: fail before binding
    remove_stale(path, f"api socket {path}")
    api = ApiServer(app, limits or Limits())
    try:
        server = await asyncio.start_unix_server(api._on_connect, path, limit=_READ_CHUNK * 4)
    except OSError as exc:
        raise ConfigError(f"api socket {path}: {os_reason(exc)}") from None
    api._server = server
    api._unix_path = path
    try:
        api._unix_inode = os.stat(path).st_ino
        os.chmod(path, mode)
        if group is not None:
            give_to_group(path, group, f"api socket {path}: [api] group")
    except (OSError, ConfigError) as exc:
        api.close()
        await api.wait_closed()
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"api socket {path}: cannot set mode: {os_reason(exc)}") from None
    logger.info("API listening on unix:%s", path)
    return api


async def start_tcp(
    host: str,
    port: int,
    app: App,
    *,
    allow_any: bool = False,
    limits: Limits | None = None,
    what: str = "api",
) -> ApiServer:
    """Serve ``app`` on TCP ``host:port`` (``[api] listen-on`` / ``--httpd-listen-on``, or
    ``what="metrics"`` for ``[metrics] listen-on``, which names it in messages).

    The API has no authentication, so binding every address (``0.0.0.0``, ``::`` or an empty
    host) is refused with :class:`ConfigError` unless ``allow_any=True``.
    """
    if _is_any(host) and not allow_any:
        raise ConfigError(
            f"api listen-on {host or '*'}:{port}: refusing to serve the unauthenticated API on "
            "every address; use 127.0.0.1 or a UNIX socket (or allow it explicitly)"
        )
    api = ApiServer(app, limits or Limits())
    try:
        api._server = await asyncio.start_server(
            api._on_connect, host or None, port, reuse_address=True, limit=_READ_CHUNK * 4
        )
    except OSError as exc:
        raise ConfigError(f"{what} listen-on {host}:{port}: {os_reason(exc)}") from None
    logger.info("%s listening on tcp:%s", "API" if what == "api" else what, api.address)
    return api


def _is_any(host: str) -> bool:
    host = host.strip("[]")
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
