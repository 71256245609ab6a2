"""Who may reach what: the server's allow rules and this host's own addresses, client
identities, admission limits, and the certificates and TLS checks they rest on.
"""
