"""The two token plugin interfaces and the registries that find them by name.

quic-tun's client asks a *token source* for one token per app connection and sends it ahead of
the tunnel's bytes; the server hands it to a *token parser*, which decides where to connect.
Both ends pick their plugin by a case-insensitive name from the command line or config
(``Fixed``, ``File``, ``Http``; ``Cleartext``), so the names live in explicit registries rather
than being discovered by reflection.

Rules every plugin follows:

1. **Validate at construction.** A bad argument raises :class:`ConfigError` from ``from_config``
   (sources) or ``__init__`` (parsers), so ``check-config`` and a reload catch it before any
   tunnel is touched.  quic-tun instead accepts anything and fails on the first connection.
2. **Fail one tunnel, never the daemon.** At run time a source raises only :class:`TokenError`
   and a parser only :class:`TokenRejected`, each with a one-line reason.
3. **Never echo a token.** Tokens may be credentials; messages name the plugin, the file, the
   URL or the peer, and at most the token's length.
4. **Parsers are pure and synchronous** (no I/O, no clock), so hypothesis can fuzz them and they
   cannot stall the event loop; sources may do I/O and are ``async``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

from quictund.errors import ConfigError
from quictund.policy.addresses import StreamAddress

__all__ = [
    "TokenParser",
    "TokenSource",
    "make_parser",
    "make_source",
    "parser_names",
    "register_parser",
    "register_source",
    "source_names",
]


class TokenSource(ABC):
    """Client side: produces the token sent for one app connection.

    Construct through :meth:`from_config` (or :func:`make_source`), which validates the
    plugin's argument.  One instance serves every tunnel of a client endpoint, so ``fetch``
    may run concurrently with itself.
    """

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(
        cls, arg: str | None, mapping: dict[str, str] | None, timeout_s: float
    ) -> TokenSource:
        """Build the source from its plugin argument; raise ConfigError naming the problem."""

    @abstractmethod
    async def fetch(self, app_addr: str) -> str:
        """Return the token for the app connection whose peer address is ``app_addr``.

        ``app_addr`` is formatted as quic-tun does: ``1.2.3.4:5678``, ``[::1]:5678``, or ``@``
        (or a socket path) for UNIX clients.  Raises :class:`TokenError` on any failure.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, deliberately a no-op
        """Release resources (connections, files).  The default has nothing to release."""


class TokenParser(ABC):
    """Server side: turns a received token into the address to connect to.

    ``__init__`` validates ``key`` (the ``token-parser-key`` setting) and raises ConfigError for
    a value the plugin does not understand.
    """

    name: ClassVar[str]

    audience: str = ""  # who the token must be meant for (plugins that check it)

    def __init__(self, key: str) -> None:
        self.key = key

    @abstractmethod
    def parse(self, token: str) -> StreamAddress:
        """Return the destination; raise :class:`TokenRejected` (never echoing the token)."""


_T = TypeVar("_T")
_S = TypeVar("_S", bound=type[TokenSource])
_P = TypeVar("_P", bound=type[TokenParser])


class _Registry(Generic[_T]):
    """Plugin classes by lower-cased name, remembering registration order for messages."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._classes: dict[str, _T] = {}
        self._display: dict[str, str] = {}

    def add(self, name: str, cls: _T) -> None:
        key = name.lower()
        existing = self._classes.get(key)
        if existing is not None and existing is not cls:
            raise ValueError(f"{self._kind} plugin name {name!r} is already registered")
        self._classes[key] = cls
        self._display[key] = name

    def get(self, name: str) -> _T:
        cls = self._classes.get(name.strip().lower())
        if cls is None:
            known = ", ".join(self._display.values())
            raise ConfigError(f"unknown {self._kind} plugin {name!r}; known: {known}")
        return cls

    def names(self) -> list[str]:
        return list(self._display.values())


_sources: _Registry[type[TokenSource]] = _Registry("token source")
_parsers: _Registry[type[TokenParser]] = _Registry("token parser")


def _plugin_name(cls: type) -> str:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} needs a non-empty class attribute 'name'")
    return name


def register_source(cls: _S) -> _S:
    """Class decorator: make a TokenSource available to :func:`make_source` by its ``name``."""
    _sources.add(_plugin_name(cls), cls)
    return cls


def register_parser(cls: _P) -> _P:
    """Class decorator: make a TokenParser available to :func:`make_parser` by its ``name``."""
    _parsers.add(_plugin_name(cls), cls)
    return cls


def make_source(
    plugin_name: str,
    arg: str | None,
    *,
    mapping: dict[str, str] | None = None,
    timeout_s: float = 5.0,
    secret_file: str | None = None,
    audience: str = "",
    ttl_s: float = 300.0,
) -> TokenSource:
    """Build the token source called ``plugin_name`` (case-insensitive); ConfigError if bad.

    ``secret_file``/``audience``/``ttl_s`` are for sources that sign (``from_signing``).
    """
    cls = _sources.get(plugin_name)
    from_signing = getattr(cls, "from_signing", None)
    if from_signing is not None:
        source: TokenSource = from_signing(arg, secret_file, audience, ttl_s)
        return source
    return cls.from_config(arg, mapping, timeout_s)


def make_parser(plugin_name: str, key: str | None, *, audience: str = "") -> TokenParser:
    """Build the token parser called ``plugin_name`` (case-insensitive); ConfigError if bad."""
    parser = _parsers.get(plugin_name)(key or "")
    parser.audience = audience
    return parser


def source_names() -> list[str]:
    """Registered source plugin names, as written by their authors (for help texts)."""
    return _sources.names()


def parser_names() -> list[str]:
    """Registered parser plugin names, as written by their authors (for help texts)."""
    return _parsers.names()


def describe(exc: BaseException) -> str:
    """An exception as a one-line reason (``strerror`` for OS errors), never empty."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__
