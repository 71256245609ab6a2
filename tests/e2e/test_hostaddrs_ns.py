"""Issue 13 section 4 through a real server in a private network namespace: an address added
after start-up is this host's (refused under a broad rule), one moved away is not (allowed).
See ``hostaddrs_ns.py`` for the set-up.  Runs with QUICTUND_TEST_ENGINE's engine."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from tests.e2e.unshared import run_unshared

_missing = [tool for tool in ("unshare", "ip", "nsenter", "mount") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(
    bool(_missing or os.geteuid() != 0) and not os.environ.get("CI"),
    reason=f"needs root and {', '.join(_missing) or 'unshare/ip/nsenter/mount'} (CI runs it)",
)


@pytest.fixture(scope="module")
def seen() -> dict[str, Any]:
    return run_unshared("tests.e2e.hostaddrs_ns")


def test_an_address_added_after_start_is_refused(seen: dict[str, Any]) -> None:
    assert seen["selfcheck"] == 1  # the local service does see connections to the new address
    for case in ("new4", "new6"):
        assert seen[case] == {"ack": 0x03, "said": "", "hits": 0}, case
    denied = [
        e for e in seen["log"]
        if e.get("msg") == "tunnel failed"
        and "not allowed by policy" in str(e.get("reason"))
        and ("10.77.0.1" in str(e) or "fd00:77::1" in str(e))
    ]  # fmt: skip
    assert len(denied) == 2, seen["log"]


def test_an_address_moved_to_another_host_is_no_longer_local(seen: dict[str, Any]) -> None:
    assert seen["moved"] == {"ack": 0x01, "said": "remote", "hits": 0}


def test_the_check_cannot_be_outrun_by_an_address_change(seen: dict[str, Any]) -> None:
    assert seen["race_wrong"] == 0


def test_a_reload_resolves_the_host_name_again(seen: dict[str, Any]) -> None:
    assert seen["named"] == [False, True]  # allowed before the reload, denied after
