"""Issue 5's policy truth table through a real server: loopback, metadata and own-address
spellings (numeric forms, IPv4-mapped IPv6, names resolving to them) are denied under broad
rules for every identity, with zero connection attempts; named rules, per-identity rules and
UNIX globs allow exactly what they name.  See ``policy_table.py`` for the set-up."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from tests.e2e import policy_table
from tests.e2e.unshared import run_unshared

_missing = [tool for tool in ("unshare", "ip", "mount") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(_missing or os.geteuid() != 0) and not os.environ.get("CI"),
    reason=f"needs root and {', '.join(_missing) or 'unshare/ip/mount'} (CI runs it)",
)


@pytest.fixture(scope="module")
def table() -> dict[str, Any]:
    return run_unshared("tests.e2e.policy_table")


def test_traps_see_connections_to_every_local_address(table: dict[str, Any]) -> None:
    assert table["selfcheck"] == dict.fromkeys(table["selfcheck"], 1)
    assert "169.254.169.254" in table["selfcheck"]


def test_at_least_40_spellings_denied_with_no_connection_attempt(table: dict[str, Any]) -> None:
    denied = [r for r in table["results"] if r["group"] == "denied"]
    spellings = {r["token"] for r in denied}
    assert len(spellings) >= 40
    assert len(spellings) == len(
        policy_table.LOOPBACK + policy_table.METADATA + policy_table.OWN
    )
    wrong = [r for r in denied if r["got"] != 0x03 or r["hits"]]
    assert not wrong, wrong


def test_allowed_and_denied_per_identity_and_unix(table: dict[str, Any]) -> None:
    others = [r for r in table["results"] if r["group"] != "denied"]
    for r in others:
        assert r["got"] == r["ack"], r
        if r["ack"] == 0x01:
            assert sum(r["hits"].values()) == 1, r  # reached exactly its destination
        else:
            assert not r["hits"], r
    assert {r["who"] for r in others if r["ack"] == 1} == {"dev", "ops"}


def test_every_denial_is_logged_with_identity_and_destination(table: dict[str, Any]) -> None:
    failed = [e for e in table["log"] if e.get("msg") == "tunnel failed"]
    denials = [r for r in table["results"] if r["got"] == 0x03]
    assert len(failed) == len(denials)
    for entry in failed:
        assert entry["identity"] in ("CN=dev", "CN=ops")
        assert "not allowed by policy" in entry["reason"]
        assert entry["server_app"] in entry["reason"]
