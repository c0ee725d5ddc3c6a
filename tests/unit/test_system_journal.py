"""journal.py: the fields events carry, and plain stderr when stderr is not the journal.

That the records really land in journald with these fields is shown under a real systemd
in test_system_netmux.py (`journalctl NETMUX_WORKLOAD=...`).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest

from netmux import journal

pytestmark = pytest.mark.unit


def test_fields_are_prefixed_and_none_dropped() -> None:
    f = journal.fields(
        journal.WORKLOAD_UP, workload="web", netns="web", ifname="eth0", address=None, extra=3
    )
    assert f == {
        "NETMUX_WORKLOAD": "web",
        "NETMUX_NETNS": "web",
        "NETMUX_IFNAME": "eth0",
        "EXTRA": "3",
        "MESSAGE_ID": journal.WORKLOAD_UP,
    }


@pytest.mark.parametrize(
    "value",
    ["2001:db8:0:1:5::7/64", ipaddress.IPv6Interface("2001:db8:0:1:5::7/64")],
)
def test_address_with_length_gives_the_prefix(value: object) -> None:
    f = journal.fields(address=value)
    assert f == {"NETMUX_ADDRESS": "2001:db8:0:1:5::7", "NETMUX_PREFIX": "2001:db8:0:1::/64"}


def test_bare_address_and_explicit_prefix() -> None:
    assert journal.fields(address="2001:db8::7") == {"NETMUX_ADDRESS": "2001:db8::7"}
    f = journal.fields(address="2001:db8::7/64", prefix="2001:db8::/48")
    assert f == {"NETMUX_ADDRESS": "2001:db8::7", "NETMUX_PREFIX": "2001:db8::/48"}
    assert journal.fields(address="not/an address") == {"NETMUX_ADDRESS": "not/an address"}


def test_message_ids_are_distinct_128_bit_ids() -> None:
    ids = [
        journal.WORKLOAD_UP,
        journal.WORKLOAD_DOWN,
        journal.NIC_ADOPTED,
        journal.ADDRESS_CHANGED,
        journal.PREFIX_CHANGED,
    ]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


CHILD = (
    "from netmux import journal; "
    "journal.info('workload x up', journal.WORKLOAD_UP, workload='x', address='2001:db8::1/64')"
)


@pytest.mark.parametrize("stream", [None, "1:2", "garbage"])
def test_plain_stderr_outside_the_journal(stream: str | None) -> None:
    """No JOURNAL_STREAM, or one that is not our stderr: a plain line on stderr."""
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if stream:
        env["JOURNAL_STREAM"] = stream
    r = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    assert r.stderr.strip().endswith("workload x up")
    assert r.stdout == ""
