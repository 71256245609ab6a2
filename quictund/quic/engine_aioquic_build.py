"""aioquic adapter, part: the compiled per-packet path, when it is there (issue 15).

Eight pieces, all Cython in this directory (docs/performance.md has what each saves):

* aioquic's connection makes a ``QuicPacketBuilder`` per ``datagrams_to_send`` call, by the
  name it imported into ``aioquic.quic.connection``.  :func:`install` points that name at
  ``_aioquic_builder.PacketBuilder``, once, for every aioquic connection of the process
  (they are all quictund's).
* :func:`open_fast` gives a connection's key pairs ``_aioquic_protect.PacketOpener`` as
  their ``decrypt_packet`` (the builder seals with ``_aioquic_protect.AesKeys``).
* :data:`fast_receive` (``_aioquic_receive.receive_short``) handles a datagram that is one
  1-RTT packet of an established connection; ``AioquicConnection.receive_datagram`` calls it
  first and aioquic's own method when it declines.
* :data:`fast_write` (``_aioquic_send.write_application``) builds the 1-RTT packets of an
  established connection with no rare frame waiting; ``SlicedSending._write_application``
  calls it first and aioquic's own method when it declines.
* :data:`fast_transmit` and :data:`fast_timer` (``_aioquic_transmit``) are the whole send pass
  (``datagrams_to_send``) and ``get_timer`` of an established connection with one validated
  path; ``AioquicConnection`` calls them first and aioquic's own methods when they decline.
* :data:`fast_sliced` (``_aioquic_sched.write_sliced``) is the adapter's own sliced send pass
  (``SlicedSending._write_application``) compiled; the Python method runs when it is not built.
* :data:`bbr_model` (``_bbr.Bbr``) is ``quictund.quic.bbr.Bbr`` compiled, the model that
  ``aioquic_cc.BbrCongestionControl`` drives.
* :data:`fast_ack` (``_aioquic_ack.handle_ack``) handles an ACK frame of a 1-RTT packet, loss
  recovery and RTT included; ``AioquicConnection._handle_ack_frame`` calls it first and
  aioquic's handler when it declines.

All of it stays aioquic's own pure-Python code when the modules were not built (no C compiler
or Python headers at install time) or when ``QUICTUND_PURE_PYTHON=1`` asks for it (``make
test`` runs the engine tests that way too); :data:`BUILDER` says which, and the first aioquic
endpoint logs a WARNING when it is the slow one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import aioquic.quic.connection
from aioquic._crypto import CryptoError
from aioquic.quic.crypto import CryptoPair
from cryptography.exceptions import InvalidTag

logger = logging.getLogger("quictund.engine")

PURE_ENV = "QUICTUND_PURE_PYTHON"

# "compiled" or why not: set by install()
BUILDER = "not installed"
_warned = False
_opener: Any = None  # the compiled PacketOpener class, once installed
# the compiled common receive case (_aioquic_receive.receive_short), once installed: True if
# it handled the datagram, False if aioquic's receive_datagram must
fast_receive: Callable[[Any, bytes, Any, float], bool] | None = None
# the compiled common send case (_aioquic_send.write_application), once installed: True if it
# built the packets, False if aioquic's _write_application must
fast_write: Callable[[Any, Any, Any, float], bool] | None = None
# the compiled send pass and timer (_aioquic_transmit), once installed: the datagrams / the
# timer, or None if aioquic's datagrams_to_send / get_timer must
fast_transmit: Callable[[Any, float], list[tuple[bytes, Any]] | None] | None = None
fast_timer: Callable[[Any], float | None] | None = None
# the adapter's sliced send pass, compiled (_aioquic_sched.write_sliced), once installed
fast_sliced: Callable[[Any, Any, Any, float, Any], None] | None = None
# quictund.quic.bbr.Bbr compiled (_bbr.Bbr), once installed
bbr_model: Any = None
# the compiled ACK frame handler (_aioquic_ack.handle_ack), once installed: True if it handled
# the frame, False if aioquic's _handle_ack_frame must
fast_ack: Callable[[Any, Any, int, Any], bool] | None = None


def install() -> str:
    """Give aioquic's connection the compiled builder if there is one; returns :data:`BUILDER`."""
    global BUILDER
    if BUILDER != "not installed":
        return BUILDER
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        BUILDER = f"aioquic's pure-Python packet path ({PURE_ENV} is set)"
        return BUILDER
    try:
        from quictund.quic._aioquic_ack import handle_ack
        from quictund.quic._aioquic_builder import PacketBuilder
        from quictund.quic._aioquic_protect import PacketOpener
        from quictund.quic._aioquic_receive import receive_short
        from quictund.quic._aioquic_sched import write_sliced
        from quictund.quic._aioquic_send import write_application
        from quictund.quic._aioquic_transmit import datagrams_to_send, get_timer
        from quictund.quic._bbr import Bbr
    except ImportError as exc:
        BUILDER = f"aioquic's pure-Python packet path (the compiled one is not built: {exc})"
        return BUILDER
    global _opener, fast_receive, fast_write, fast_transmit, fast_timer, fast_ack, fast_sliced
    global bbr_model
    aioquic.quic.connection.QuicPacketBuilder = PacketBuilder  # type: ignore[attr-defined,assignment]
    _opener = PacketOpener
    fast_receive = receive_short
    fast_write = write_application
    fast_transmit = datagrams_to_send
    fast_timer = get_timer
    fast_ack = handle_ack
    fast_sliced = write_sliced
    bbr_model = Bbr
    BUILDER = "compiled"
    return BUILDER


def open_fast(pairs: Iterable[CryptoPair]) -> None:
    """Give each of a connection's key pairs the compiled ``decrypt_packet`` (if installed).

    aioquic calls ``pair.decrypt_packet`` for every packet it receives; the compiled one
    (``PacketOpener``) removes AES-GCM protection in C and hands anything else -- missing keys,
    ChaCha20, a key update, errors -- to aioquic's own method, bound here as its fallback.
    """
    if _opener is None:
        return
    for pair in pairs:
        fallback = CryptoPair.decrypt_packet.__get__(pair)
        pair.decrypt_packet = _opener(pair, fallback, CryptoError, InvalidTag)  # type: ignore[method-assign]


def warn_if_pure() -> None:
    """Say once per process, loudly, that the aioquic engine runs its slow packet path."""
    global _warned
    if BUILDER != "compiled" and not _warned:
        _warned = True
        logger.warning(
            "aioquic engine: %s; each packet costs about a third more CPU to send and a "
            "quarter more to receive. "
            "Reinstall with a C compiler and Python's headers (apt install gcc python3-dev) "
            "to build it",
            BUILDER,
        )
