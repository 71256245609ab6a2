"""QUIC plumbing: the engine adapter, the per-connection session driver, server demux, client connector."""
