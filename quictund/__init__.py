"""quictund: a QUIC tunnel daemon for TCP and UNIX-socket apps, wire-compatible with quic-tun."""

__version__ = "0.1.0"
