"""What every detector is: a ``Verdict`` per look at the bytes, and the ``Detector`` class
(rules in the package docstring, ``quictund/classify/__init__.py``)."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import ClassVar

LOOKAHEAD = 4096


class Verdict(enum.Enum):
    DENY = "deny"  # not this protocol; never ask again
    MAYBE = "maybe"  # cannot tell yet
    PARTIAL = "partial"  # it is this protocol; ``properties`` so far, more may follow
    AFFIRM = "affirm"  # it is this protocol; ``properties`` are final


class Detector(ABC):
    """Recognises one protocol from the first bytes of both directions.

    One instance per tunnel.  ``examine`` is called after every chunk with the whole buffers so
    far (each only ever grows, rule 2) and must never raise on any input.
    """

    name: ClassVar[str]

    def __init__(self, lookahead: int) -> None:
        self.lookahead = lookahead
        self.properties: dict[str, str] | None = None

    @abstractmethod
    def examine(self, client: bytes, server: bytes) -> Verdict:
        """Look at the bytes so far; update ``properties`` when returning PARTIAL or AFFIRM."""
