"""rtnl.py's message building and parsing (pure), checked against pyroute2's own
encoder/decoder for the same messages."""

from __future__ import annotations

import socket
import struct

import pytest

from netmux import rtnl

pytestmark = pytest.mark.unit


def test_attr_roundtrip_and_padding() -> None:
    raw = rtnl.attr(3, b"eth0\0") + rtnl.attr(1, bytes(6)) + rtnl.attr(28, struct.pack("=I", 7))
    assert len(raw) % 4 == 0
    got = rtnl.attrs(raw)
    assert got[3] == b"eth0\0" and got[1] == bytes(6) and got[28] == struct.pack("=I", 7)


def test_parse_link_matches_pyroute2() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    msg = ifinfmsg()
    msg["index"], msg["flags"] = 5, 0x1003
    msg["attrs"] = [
        ("IFLA_IFNAME", "eth0"),
        ("IFLA_ADDRESS", "02:00:5e:10:00:01"),
        ("IFLA_IFALIAS", "netmux:abc"),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "macvlan")]}),
    ]
    msg.encode()
    link = rtnl.parse_link(bytes(msg.data[16:]))
    assert link == rtnl.Link(5, 0x1003, "eth0", "02:00:5e:10:00:01", "macvlan", "netmux:abc",
                             None)  # fmt: skip


def test_parse_addr_prefers_ifa_flags() -> None:
    body = struct.pack("=BBBBI", socket.AF_INET6, 64, 0x04, 0, 9)
    addr = bytes.fromhex("20010db8000000010000000000000001")
    a = rtnl.parse_addr(body + rtnl.attr(rtnl.IFA_ADDRESS, addr))
    assert a == rtnl.IfAddr(9, 64, 0x04, addr)
    a = rtnl.parse_addr(body + rtnl.attr(rtnl.IFA_ADDRESS, addr)
                        + rtnl.attr(rtnl.IFA_FLAGS, struct.pack("=I", 0x104)))  # fmt: skip
    assert a is not None and a.flags == 0x104
    assert rtnl.parse_addr(body) is None


def test_parse_route_oif_multipath_table() -> None:
    head = struct.pack("=BBBBBBBBI", socket.AF_INET6, 0, 0, 0, 254, 0, 0, 1, 0)
    r = rtnl.parse_route(head + rtnl.attr(rtnl.RTA_OIF, struct.pack("=i", 4)))
    assert r == rtnl.Route(0, 254, (4,))
    hops = struct.pack("=HBBi", 8, 0, 0, 6) + struct.pack("=HBBi", 8, 0, 0, 7)
    r = rtnl.parse_route(head + rtnl.attr(rtnl.RTA_MULTIPATH, hops)
                         + rtnl.attr(rtnl.RTA_TABLE, struct.pack("=I", 1000)))  # fmt: skip
    assert r == rtnl.Route(0, 1000, (6, 7))


def test_mac_bytes() -> None:
    assert rtnl.mac_bytes("02:00:5e:10:00:01") == bytes([2, 0, 0x5E, 0x10, 0, 1])
