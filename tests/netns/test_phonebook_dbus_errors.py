"""Each failure reaches a D-Bus caller under its own error name (phonebook/errors.py), with
the real phonebookd on a private bus (tests/phonebookfix.py) and a dbus-next client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux.phonebook import client, errors
from tests import phonebookfix
from tests.conftest import Unprivileged
from tests.phonebookfix import SETTLE_TIMEOUT, Stack, add_workload_link, addr

pytestmark = pytest.mark.netns

stack = phonebookfix.stack
E = errors.PREFIX


@pytest.fixture
def wl(netns: Callable[[str], str]) -> str:
    ns = netns("w")
    add_workload_link(ns)
    return ns


def call(stack: Stack, member: str, sig: str, body: list[object], ns: str = "") -> str:
    """The error name phonebookd answers `member` with ('' for a method return)."""
    from dbus_next.aio.message_bus import MessageBus
    from dbus_next.constants import MessageType
    from dbus_next.message import Message

    async def go() -> str:
        bus = MessageBus(bus_address=stack.bus, negotiate_unix_fd=True)
        await bus.connect()
        r, w = os.pipe()
        try:
            fds = [r] if "h" in sig else []
            msg = Message(destination=client.BUS_NAME, path=client.PATH, interface=client.IFACE,
                          member=member, signature=sig, body=body, unix_fds=fds)  # fmt: skip
            reply = await asyncio.wait_for(bus.call(msg), SETTLE_TIMEOUT + 5)
        finally:
            bus.disconnect()
            os.close(r)
            os.close(w)
        assert reply is not None
        return reply.error_name or "" if reply.message_type == MessageType.ERROR else ""

    return asyncio.run(go())


def test_bad_arguments_are_invalid_argument(stack: Stack, wl: str) -> None:
    assert call(stack, "Publish", "sssh", ["Bad", "eth0", wl, 0]) == E + "InvalidArgument"
    assert call(stack, "Publish", "ssh", ["good", "eth0", 0]) == E + "InvalidArgument"
    assert call(stack, "Publish", "sssh", ["good", "eth0", "../x", 0]) == E + "InvalidArgument"


def test_a_name_in_use_is_name_taken(stack: Stack, wl: str, netns: Callable[[str], str]) -> None:
    pub = client.publish("owned", "eth0", wl, address=stack.bus)
    assert pub is not None, stack.log()
    other = netns("o")
    add_workload_link(other)
    try:
        assert call(stack, "Publish", "sssh", ["owned", "eth0", other, 0]) == E + "NameTaken"
        with pytest.raises(errors.NameTaken, match="already published"):
            client.publish("owned", "eth0", other, address=stack.bus)
    finally:
        client.close(pub)


def test_a_late_sink_is_not_served_not_name_taken(stack: Stack, wl: str) -> None:
    addr(wl, "add", "2001:db8:1::15/64", "nodad")
    knotd = stack.procs[0]
    assert Path(f"/proc/{knotd.pid}/comm").read_text().strip() == "knotd"
    os.kill(knotd.pid, signal.SIGSTOP)
    try:
        assert call(stack, "Publish", "sssh", ["late", "eth0", wl, 0]) == E + "NotServed"
    finally:
        os.kill(knotd.pid, signal.SIGCONT)


NOBODY_UNPUBLISH = """
import asyncio, sys
from dbus_next.aio.message_bus import MessageBus
from dbus_next.message import Message
async def go():
    bus = MessageBus(bus_address=sys.argv[1])
    await bus.connect()
    r = await bus.call(Message(destination="org.netmux.Phonebook1", path="/org/netmux/Phonebook1",
        interface="org.netmux.Phonebook1", member="Unpublish", signature="s", body=["held"]))
    print(r.error_name or "")
asyncio.run(go())
"""


def test_someone_elses_name_is_access_denied(
    stack: Stack, wl: str, unprivileged: Unprivileged
) -> None:
    pub = client.publish("held", "eth0", wl, address=stack.bus)
    assert pub is not None, stack.log()
    try:
        r = subprocess.run(  # nobody's Python: a checkout under /root is out of its reach
            ["setpriv", "--reuid=nobody", "--regid=nogroup", f"--groups={stack.group}",
             unprivileged.python, "-c", NOBODY_UNPUBLISH, stack.bus],
            capture_output=True, text=True, timeout=20, env=unprivileged.env(),
        )  # fmt: skip
        assert r.stdout.strip() == E + "AccessDenied", r.stderr
    finally:
        client.close(pub)
