"""quictund: a QUIC tunnel daemon for TCP and UNIX-socket applications, wire-compatible with quic-tun."""

__version__ = "0.1.0"
