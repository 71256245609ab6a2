"""The configuration: the listeners' settings (pydantic models), the TOML files and their
``[daemon]``, ``[api]`` and ``[log]`` sections, and quic-tun's command-line flags mapped onto
them.
"""
