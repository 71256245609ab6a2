"""The command line: ``quictund`` and quic-tun's ``quictun-server``/``quictun-client``,
their parsers, completion, the demo, ``inspect``, ``reload`` and the TOML schema.

The only part that turns errors into exit codes and prints to the terminal.
"""
