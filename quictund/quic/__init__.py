"""QUIC plumbing: engine adapter, per-connection session, server demux, client connector."""
