"""The ``Classifier`` that feeds one tunnel's bytes to the detectors, and the detectors by name
(rules in the package docstring, ``quictund/classify/__init__.py``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import ClassVar

from quictund.classify.base import LOOKAHEAD, Detector, Verdict
from quictund.classify.spice import SpiceDetector
from quictund.classify.ssh import SshDetector
from quictund.classify.tls import TlsDetector
from quictund.errors import ConfigError

logger = logging.getLogger(__name__)


class Classifier:
    """Feeds both directions of one tunnel to the detectors; see the module docstring."""

    LOOKAHEAD: ClassVar[int] = LOOKAHEAD

    def __init__(
        self,
        detectors: Sequence[type[Detector]] | None = None,
        *,
        lookahead: int | None = None,
    ) -> None:
        self._lookahead = self.LOOKAHEAD if lookahead is None else lookahead
        if self._lookahead < 1:
            raise ValueError(f"lookahead must be positive (got {self._lookahead})")
        classes = DEFAULT_DETECTORS if detectors is None else detectors
        self._pending: list[Detector] = [cls(self._lookahead) for cls in classes]
        self._claimant: Detector | None = None
        self._client = b""
        self._server = b""
        self._done = not self._pending
        self._protocol = ""
        self._properties: dict[str, str] | None = None

    # public API

    @property
    def done(self) -> bool:
        """True once the result is final; the data path stops feeding."""
        return self._done

    @property
    def protocol(self) -> str:
        """The protocol's name (``"spice"``, ``"ssh"``, ``"tls"``), or ``""`` while unknown."""
        return self._protocol

    @property
    def properties(self) -> dict[str, str] | None:
        """A copy of the protocol's properties, ``None`` while the protocol is unknown."""
        return None if self._properties is None else dict(self._properties)

    def feed_client(self, data: bytes | bytearray | memoryview) -> None:
        """Note bytes the client application sent (any chunk size; never raises)."""
        if self._done:
            return
        room = self._lookahead - len(self._client)
        if room <= 0 or not data:
            return
        self._client += bytes(data[:room])
        self._examine()

    def feed_server(self, data: bytes | bytearray | memoryview) -> None:
        """Note bytes the server application sent (any chunk size; never raises)."""
        if self._done:
            return
        room = self._lookahead - len(self._server)
        if room <= 0 or not data:
            return
        self._server += bytes(data[:room])
        self._examine()

    def finish(self) -> None:
        """No more bytes will come (the tunnel ended): make what is known final."""
        if not self._done:
            self._settle(self._claimant)

    # private

    def _examine(self) -> None:
        for detector in list(self._pending):
            verdict = self._ask(detector)
            if verdict is Verdict.AFFIRM:
                self._settle(detector)
                return
            if verdict is Verdict.PARTIAL:
                self._claimant = detector
                self._pending = [detector]
                self._publish(detector)
                break
            if verdict is Verdict.DENY:
                if detector is self._claimant:  # rule 4: keep what it published
                    self._settle(detector)
                    return
                self._pending.remove(detector)
        if not self._pending:
            self._settle(None)
        elif len(self._client) >= self._lookahead and len(self._server) >= self._lookahead:
            self._settle(self._claimant)

    def _ask(self, detector: Detector) -> Verdict:
        try:
            return detector.examine(self._client, self._server)
        except Exception:  # a detector bug must not break the tunnel (rule 3)
            logger.exception("classifier %r failed; ignoring it for this tunnel", detector.name)
            return Verdict.DENY

    def _publish(self, detector: Detector) -> None:
        self._protocol = detector.name
        self._properties = None if detector.properties is None else dict(detector.properties)

    def _settle(self, detector: Detector | None) -> None:
        if detector is not None:
            self._publish(detector)
        self._done = True
        self._pending = []
        self._claimant = None
        self._client = self._server = b""  # idle tunnels keep no look-ahead bytes


DEFAULT_DETECTORS: tuple[type[Detector], ...] = (SpiceDetector, SshDetector, TlsDetector)
DETECTORS: dict[str, type[Detector]] = {cls.name: cls for cls in DEFAULT_DETECTORS}


def detectors_named(names: Iterable[str]) -> tuple[type[Detector], ...]:
    """The detector classes for configured names, in order; ``ConfigError`` for an unknown one."""
    chosen = []
    for name in names:
        if name not in DETECTORS:
            known = ", ".join(sorted(DETECTORS))
            raise ConfigError(f"unknown protocol classifier {name!r}; known: {known}")
        chosen.append(DETECTORS[name])
    return tuple(chosen)
