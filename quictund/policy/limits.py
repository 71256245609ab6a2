"""Flood limits of a server endpoint, as pure state machines that take ``now``.

A QUIC server is cheap to attack: a client Initial of 1,200 bytes makes the server build TLS
state and answer with several kilobytes, and a connected client can open thousands of streams,
each of which makes the server ``connect()`` somewhere.  The limits here bound what one source
(or one certificate identity) can make the server do; the asyncio shells (``quic/server.py``,
``server_endpoint.py``) ask them and act.

* ``Admission`` decides what happens to an Initial that would start a new connection: accept,
  answer with a Retry (address validation, RFC 9000 §8.1) once too many handshakes are half
  open, or drop (half-open cap, per-source connection rate, a forged or stale Retry token).
* ``TokenBucket`` / ``SourceBuckets`` rate-limit per source address; sources are grouped by
  /32 (IPv4) and /64 (IPv6, one host's usual allocation), and the table is bounded (least
  recently used sources are forgotten first), so a spoofed flood cannot grow it without end.
* ``RetryTokens`` are stateless: HMAC-SHA256 over the client's address, the original
  destination connection id and a timestamp, under a per-process random key.
* ``LimitLog`` turns thousands of refusals into one WARNING per limit every few seconds.

Every refusal is counted by limit name (``Limit``), which becomes the metric
``quictund_limit_hits_total{listener,limit}``.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import ipaddress
import os
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

__all__ = [
    "Admission",
    "AdmissionSettings",
    "Decision",
    "Limit",
    "LimitLog",
    "RetryTokens",
    "SourceBuckets",
    "TokenBucket",
    "source_key",
]


class Limit(enum.StrEnum):
    """The name of each limit, as it appears in metrics and log lines."""

    HALF_OPEN = "half-open"  # too many QUIC handshakes in progress
    RETRY = "retry"  # Initial answered with a Retry (address validation); not a refusal
    BAD_RETRY_TOKEN = "bad-retry-token"  # forged, stale or for another address
    CONNECTION_RATE = "connection-rate"  # new QUIC connections per source
    HANDSHAKE_TIMEOUT = "handshake-timeout"  # QUIC handshake not done in time
    MAX_CONNECTIONS = "max-connections"  # established + half-open connections
    TUNNEL_RATE = "tunnel-rate"  # new tunnels per source
    TUNNELS_PER_CONNECTION = "tunnels-per-connection"  # peer reached max-tunnels
    TUNNELS_PER_IDENTITY = "tunnels-per-identity"  # concurrent tunnels of one identity
    TOKEN_TIMEOUT = "token-timeout"  # the 512-byte token did not arrive in time


@functools.lru_cache(maxsize=4096)
def source_key(host: str) -> str:
    """Group addresses the way one attacker holds them: IPv4 /32, IPv6 /64.

    Cached: every new tunnel asks twice (its rate bucket and its quota), and parsing the
    address each time was 8 % of what a server spent on the datagrams of a peer opening
    thousands of streams (cProfile, hostile bench)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float, count: float = 1.0) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        if now > self.stamp:  # a clock stepping back must not mint tokens later
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= count:
            self.tokens -= count
            return True
        return False


def worker_share(settings: AdmissionSettings, workers: int) -> AdmissionSettings:
    """One worker's part of the connection limits, so that N workers admit what one process
    would: a server's connections spread evenly over its workers (each goes to the worker its
    random first connection id names: quic/steering.py), so each worker takes 1/N of them."""
    if workers <= 1:
        return settings
    return AdmissionSettings(
        max_half_open=-(-settings.max_half_open // workers),
        retry_threshold=-(-settings.retry_threshold // workers),
        connection_rate=settings.connection_rate / workers,
        connection_burst=max(1.0, settings.connection_burst / workers),
    )


class SourceBuckets:
    """A token bucket per source key, bounded to ``max_sources`` (LRU)."""

    def __init__(self, rate: float, burst: float, max_sources: int = 65536) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


class RetryTokens:
    """Stateless Retry tokens: ``version | issued (ms) | len | odcid | HMAC[:16]``.

    The key is random per process: a restart invalidates outstanding tokens, which costs a
    client one more round trip, never a failure (it gets a new Retry).
    """

    VERSION = 1
    _HEAD = struct.Struct("!BQB")
    _MAC = 16

    def __init__(self, lifetime_s: float = 10.0, key: bytes | None = None) -> None:
        self.lifetime_s = lifetime_s
        self._key = key if key is not None else os.urandom(32)

    def issue(self, addr: tuple[str, int], odcid: bytes, now: float) -> bytes:
        body = self._HEAD.pack(self.VERSION, int(now * 1000), len(odcid)) + odcid
        return body + self._mac(addr, body)

    def validate(self, token: bytes, addr: tuple[str, int], now: float) -> bytes | None:
        """The original destination connection id, or ``None`` for a bad or stale token."""
        head = self._HEAD.size
        if len(token) < head + self._MAC:
            return None
        version, issued_ms, length = self._HEAD.unpack_from(token)
        if version != self.VERSION or len(token) != head + length + self._MAC:
            return None
        body, mac = token[: head + length], token[head + length :]
        if not hmac.compare_digest(mac, self._mac(addr, body)):
            return None
        age = now - issued_ms / 1000
        if not -1.0 <= age <= self.lifetime_s:
            return None
        return body[head:]

    def _mac(self, addr: tuple[str, int], body: bytes) -> bytes:
        peer = f"{addr[0]}|{addr[1]}|".encode()
        return hmac.new(self._key, peer + body, hashlib.sha256).digest()[: self._MAC]


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    max_half_open: int = 1000
    retry_threshold: int = 100
    connection_rate: float = 20.0
    connection_burst: float = 100.0


class Decision(enum.Enum):
    ACCEPT = "accept"
    RETRY = "retry"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    limit: Limit | None = None
    odcid: bytes | None = None  # when ACCEPT follows a valid Retry token


class Admission:
    """What to do with a client Initial that would open a new connection."""

    def __init__(self, settings: AdmissionSettings, tokens: RetryTokens | None = None) -> None:
        self.settings = settings
        self.tokens = tokens or RetryTokens()
        self.sources = SourceBuckets(settings.connection_rate, settings.connection_burst)

    def decide(self, *, addr: tuple[str, int], token: bytes, half_open: int, now: float) -> Verdict:
        s = self.settings
        if half_open >= s.max_half_open:
            return Verdict(Decision.DROP, Limit.HALF_OPEN)
        odcid: bytes | None = None
        if token:
            odcid = self.tokens.validate(token, addr, now)
            if odcid is None:
                return Verdict(Decision.DROP, Limit.BAD_RETRY_TOKEN)
        elif half_open >= s.retry_threshold:
            # Unvalidated addresses may be spoofed: do not charge their rate bucket (that
            # would let an attacker lock a victim out), make them prove the address first.
            return Verdict(Decision.RETRY, Limit.RETRY)
        if not self.sources.take(source_key(addr[0]), now):
            return Verdict(Decision.DROP, Limit.CONNECTION_RATE)
        return Verdict(Decision.ACCEPT, None, odcid)


@dataclass
class LimitLog:
    """At most one WARNING per limit every ``every_s`` seconds, with what was refused since."""

    every_s: float = 10.0
    hits: Counter[str] = field(default_factory=Counter)
    _pending: Counter[str] = field(default_factory=Counter)
    _last: dict[str, float] = field(default_factory=dict)
    _example: dict[str, str] = field(default_factory=dict)

    def hit(self, limit: Limit, detail: str, now: float) -> str | None:
        """Count one hit; return a line to log now, or ``None`` while throttled."""
        self.hits[limit] += 1
        self._pending[limit] += 1
        self._example.setdefault(limit, detail)
        last = self._last.get(limit)
        if last is not None and now - last < self.every_s:
            return None
        count, example = self._pending.pop(limit), self._example.pop(limit)
        self._last[limit] = now
        if count == 1:
            return f"limit {limit}: {detail}"
        return f"limit {limit}: {count} refusals since the last report (first: {example})"
