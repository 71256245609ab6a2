from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.hypothesis_profiles  # noqa: F401 -- loads HYPOTHESIS_PROFILE


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for UNIX sockets (sun_path is ~107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="qt-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where test servers keep their self-signed certificate (generated once per session)."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture
def ca(state_dir: Path) -> Path:
    """The test servers' self-signed certificate, which clients use as their CA."""
    import socket

    from quictund.policy import tls

    cert, _ = tls.ensure_self_signed(state_dir, ["localhost", socket.gethostname()])
    return cert
