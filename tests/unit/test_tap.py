"""The pure parts of the VM path: tap sysfs parsing, {tapfd}/{mac}, link flags, and the
guest-address learning from NDP frames (phonebook/follow.py)."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

import pytest

from netmux import links, tap, workload
from netmux.phonebook import follow

pytestmark = pytest.mark.unit

MAC = bytes.fromhex("02d4fb5379b5")


def test_parse_sysfs() -> None:
    assert tap.parse_sysfs("tap2 246:7\n") == tap.TapDevice("tap2", 246, 7)
    assert tap.parse_sysfs("") is None
    assert tap.parse_sysfs("tap2 garbage\n") is None


def test_substitute() -> None:
    cmd = ("qemu", "-netdev", "tap,id=n0,fd={tapfd}", "-device", "virtio-net,mac={mac}")
    assert tap.substitute(cmd, 5, "02:00:00:00:00:01") == [
        "qemu", "-netdev", "tap,id=n0,fd=5", "-device", "virtio-net,mac=02:00:00:00:00:01",
    ]  # fmt: skip
    assert tap.substitute(("x{tapfd}",), None, "m") == ["x{tapfd}"]


def test_macvtaps_get_allmulticast_macvlans_do_not() -> None:
    assert links.child_link_flags("macvtap") == {"flags": 0x200, "change": 0x200}
    assert links.child_link_flags("macvlan") == {}


def test_holds_unit_only_as_a_notify_units_main_process() -> None:
    assert workload.holds_unit({"NOTIFY_SOCKET": "/run/x", "INVOCATION_ID": "ab"})
    assert not workload.holds_unit({"NOTIFY_SOCKET": "/run/x"})
    assert not workload.holds_unit({"INVOCATION_ID": "ab"})


def ndp(src_mac: bytes, icmp_type: int, src: str, target: str) -> bytes:
    eth = b"\x33\x33\xff\x00\x00\x01" + src_mac + b"\x86\xdd"
    ip6 = struct.pack("!IHBB", 6 << 28, 24, 58, 255)
    ip6 += IPv6Address(src).packed + IPv6Address("ff02::1:ff00:1").packed
    icmp = bytes([icmp_type, 0, 0, 0, 0, 0, 0, 0]) + IPv6Address(target).packed
    return eth + ip6 + icmp


def test_guest_addresses_from_dad_ns_na() -> None:
    g = "2001:db8:0:1::5"
    assert follow.guest_ndp_addresses(ndp(MAC, 135, "::", g), MAC) == {IPv6Address(g)}
    # An NS with a source address shows that address, not the target it asks for.
    got = follow.guest_ndp_addresses(ndp(MAC, 135, g, "2001:db8:0:1::1"), MAC)
    assert got == {IPv6Address(g)}
    assert follow.guest_ndp_addresses(ndp(MAC, 136, g, g), MAC) == {IPv6Address(g)}
    # Another sender, link-local addresses, other ICMPv6 and short frames: nothing.
    assert follow.guest_ndp_addresses(ndp(b"\x02" * 6, 135, "::", g), MAC) == set()
    assert follow.guest_ndp_addresses(ndp(MAC, 135, "::", "fe80::5"), MAC) == set()
    assert follow.guest_ndp_addresses(ndp(MAC, 133, g, g), MAC) == set()
    assert follow.guest_ndp_addresses(ndp(MAC, 135, "::", g)[:70], MAC) == set()
