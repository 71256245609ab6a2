"""The long-running daemon: endpoints built from the configuration, reload keeping unchanged
tunnels, workers, systemd notification and signals.  Only ``quictund.cli`` imports it.
"""
