"""The protocol classifiers (Spice, SSH, TLS) on both directions in any chunking
(quictund/classify/).

Findings: an exception inside a detector (the classifier logs it and treats it as DENY, so it
never reaches a tunnel, but it is a bug), a protocol that changes once published, or a detector
shown more than ``lookahead`` bytes.
"""

from __future__ import annotations

import logging

from _common import FuzzedDataProvider, instrument_imports, main

with instrument_imports():
    from quictund.classify import DEFAULT_DETECTORS, Classifier, Detector, Verdict


class _Raise(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise AssertionError(f"detector failed: {record.getMessage()} {record.exc_info!r}")


logging.getLogger("quictund.classify").addHandler(_Raise(logging.ERROR))
logging.getLogger("quictund.classify").propagate = False


class _Bound(Detector):
    name = "bound"

    def examine(self, client: bytes, server: bytes) -> Verdict:
        assert len(client) <= self.lookahead and len(server) <= self.lookahead
        return Verdict.MAYBE


def test_one(data: bytes) -> None:
    fdp = FuzzedDataProvider(data)
    lookahead = (4096, 64, 300, 1024)[fdp.ConsumeIntInRange(0, 3)]
    classifier = Classifier([*DEFAULT_DETECTORS, _Bound], lookahead=lookahead)
    seen = ""
    while fdp.remaining_bytes():
        from_client = fdp.ConsumeBool()
        chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 400))
        if from_client:
            classifier.feed_client(chunk)
        else:
            classifier.feed_server(chunk)
        assert seen in ("", classifier.protocol), (seen, classifier.protocol)
        seen = classifier.protocol
        assert (classifier.properties is None) == (classifier.protocol == "")
    classifier.finish()
    assert classifier.done and classifier.protocol in ("", "spice", "ssh", "tls")


if __name__ == "__main__":
    main(test_one)
