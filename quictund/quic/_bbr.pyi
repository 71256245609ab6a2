"""Types of the compiled BBR model (_bbr.pyx): quictund.quic.bbr's, compiled."""

from quictund.quic.bbr import Bbr as Bbr
from quictund.quic.bbr import MaxFilter as MaxFilter
from quictund.quic.bbr import SentState as SentState
