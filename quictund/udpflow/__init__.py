"""UDP flows over QUIC DATAGRAM frames (RFC 9221); the format is in docs/design.md.

* ``codec``  -- the DATAGRAM frame payload (flow id varint + UDP payload), pure.
* ``flow``   -- per-flow counters and the per-connection demultiplexer (``FlowMux``).
* ``client`` -- the client's UDP listener and its flows (one per app address).
* ``server`` -- the server's flows: one connected UDP socket per flow.
"""
