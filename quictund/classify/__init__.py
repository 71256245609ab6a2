"""Which application protocol a tunnel carries, from its first bytes (sans-IO).

The tunnel data path hands every chunk it forwards to ``Classifier.feed_client`` (bytes the
client application sent) or ``Classifier.feed_server`` (bytes the server application sent) until
``Classifier.done`` is true.  The classifier never makes the data path wait: it copies at most
``lookahead`` bytes per direction, answers synchronously, reads no clock and does no I/O.  The
API reads ``protocol`` and ``properties`` whenever it likes (quic-tun's ``protocol`` and
``protocolProperties`` fields).

Rules the classifier keeps:

1. Bounded: each direction's buffer holds at most ``lookahead`` bytes (default 4096; quic-tun
   keeps 1024).  Bytes past that are not copied, and feeding is a no-op once ``done``.
2. Append-only: a detector sees the same two buffers grow, one call per chunk, so it may remember
   how far it has parsed (``examine`` never re-reads a prefix it has consumed).
3. Never raises: malformed input is a ``DENY``; an exception escaping a detector (a bug) is
   logged and counted as ``DENY`` for that detector only.  The tunnel is never affected.
4. Monotonic: once ``protocol`` is non-empty it never changes.  The first detector that says
   ``PARTIAL`` claims the tunnel; the others stop being asked.  If the claimant later says
   ``DENY`` the result is final with the properties it had published.
5. Final (``done``) when a detector says ``AFFIRM``, when every detector said ``DENY``, when
   both buffers are full, or when the data path calls ``finish()`` (the tunnel ended).

Detectors are one small class each (``Detector``): ``examine(client, server)`` returns
``Verdict.DENY``, ``MAYBE`` (need more bytes), ``PARTIAL`` (it is this protocol, here are the
properties so far, more may follow) or ``AFFIRM`` (final), and keeps ``properties`` up to date.
A detector knows the look-ahead (``self.lookahead``): when what it still needs can never fit,
it decides with what it has instead of waiting for ``finish()``.

Layout: ``base.py`` (``Verdict``, ``Detector``), ``classifier.py`` (``Classifier`` and the
detectors by name), one module per protocol.  Built-in detectors: ``SpiceDetector``
(``spice.py``, quic-tun's discriminator, see reference/quic-tun-behaviour.md section 4.2),
``SshDetector`` (``ssh.py``, RFC 4253 section 4.2 identification strings) and ``TlsDetector``
(``tls.py``, the ClientHello's SNI and ALPN).

quic-tun bugs this module does not copy (its ``pkg/classifier/spice.go``):

* channel type 11 is reported as ``"webdav"`` (quic-tun: ``"webdev"``) and unknown types as
  ``"unknown"`` (quic-tun: ``"unknow"``);
* SPICE_MSG_MAIN_NAME with ``name_len == 0`` panics quic-tun's goroutine; here the name is
  absent (Go's ``omitempty`` would drop an empty name anyway);
* quic-tun stops at the first main-channel message that is not INIT, NAME or UUID; here unknown
  messages are skipped and the search goes on within the look-ahead;
* quic-tun polls every 500 ms, re-parses from scratch, and can poll for ever on an incomplete
  main channel; here each chunk is examined once, parsing resumes where it stopped, and a
  message that cannot fit in the look-ahead ends the search with what is known.

Known limitation kept from quic-tun: the Spice parser assumes the mini data header
(SPICE_COMMON_CAP_MINI_HEADER, which every spice-server since 0.12 negotiates).
"""

from quictund.classify.base import LOOKAHEAD, Detector, Verdict
from quictund.classify.classifier import (
    DEFAULT_DETECTORS,
    DETECTORS,
    Classifier,
    detectors_named,
)
from quictund.classify.spice import SpiceDetector
from quictund.classify.ssh import SshDetector
from quictund.classify.tls import TlsDetector

__all__ = [
    "DEFAULT_DETECTORS",
    "DETECTORS",
    "LOOKAHEAD",
    "Classifier",
    "Detector",
    "SpiceDetector",
    "SshDetector",
    "TlsDetector",
    "Verdict",
    "detectors_named",
]
