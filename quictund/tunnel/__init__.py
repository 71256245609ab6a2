"""The tunnel data path: client and server endpoints, the per-stream handshake, the splice
between an app socket and a QUIC stream, listeners and their socket files, and the table of
live tunnels.
"""
