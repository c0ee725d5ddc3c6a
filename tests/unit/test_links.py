"""Pure parts of links.py: sysctl order, what counts as usable, the one-line reasons."""

from __future__ import annotations

import sys
from ipaddress import IPv6Address

import pytest

from netmux import ifaddr, links, names
from netmux.links import Addr, LinkState

pytestmark = pytest.mark.unit

LL = Addr(IPv6Address("fe80::1"), 64, 0x80)
GLOBAL = Addr(IPv6Address("2001:db8:0:1::5"), 64, 0)
ULA = Addr(IPv6Address("fd64:cafe::5"), 64, 0)


def test_sysctls_secret_first_everything_before_up() -> None:
    items = links.workload_sysctls("eth0", "::1", optimistic=True, retrans_time_ms=100)
    keys = [k for k, _ in items]
    assert keys[0] == "net.ipv6.conf.eth0.stable_secret"
    assert keys.index("net.ipv6.conf.eth0.stable_secret") < keys.index(
        "net.ipv6.conf.eth0.addr_gen_mode"
    )
    d = dict(items)
    assert d["net.ipv6.conf.eth0.forwarding"] == "0"
    assert d["net.ipv6.conf.eth0.accept_ra"] == "1"
    assert d["net.ipv6.conf.eth0.optimistic_dad"] == "1"
    assert d["net.ipv6.conf.eth0.use_optimistic"] == "1"
    assert d["net.ipv6.conf.eth0.router_solicitation_delay"] == "0"
    assert d["net.ipv6.neigh.eth0.retrans_time_ms"] == "100"
    assert d["net.ipv6.conf.eth0.ndisc_notify"] == "1"
    assert "accept_dad" not in d or d["net.ipv6.conf.eth0.accept_dad"] != "0"
    plain = dict(links.workload_sysctls("eth0", "::1", optimistic=False, retrans_time_ms=250))
    assert "net.ipv6.conf.eth0.optimistic_dad" not in plain
    assert plain["net.ipv6.neigh.eth0.retrans_time_ms"] == "250"


@pytest.mark.parametrize(
    ("flags", "usable"),
    [
        (0, True),
        (ifaddr.IFA_F_TENTATIVE, False),
        (ifaddr.IFA_F_TENTATIVE | ifaddr.IFA_F_OPTIMISTIC, True),
        (ifaddr.IFA_F_DEPRECATED, False),
        (ifaddr.IFA_F_DADFAILED | ifaddr.IFA_F_TENTATIVE, False),
    ],
)
def test_usable(flags: int, usable: bool) -> None:
    assert Addr(IPv6Address("2001:db8::1"), 64, flags).usable() is usable


def test_global_ula_split() -> None:
    assert GLOBAL.is_global and not GLOBAL.is_ula
    assert ULA.is_ula and not ULA.is_global
    assert LL.is_link_local and not LL.is_global
    st = LinkState("eth0", (LL, GLOBAL, ULA), True)
    split = links.split_addresses(st.addrs)
    assert split == {
        "global": ["2001:db8:0:1::5/64"],
        "ula": ["fd64:cafe::5/64"],
        "link_local": ["fe80::1/64"],
    }


def test_ready() -> None:
    assert links.ready(LinkState("eth0"), "none")
    assert not links.ready(LinkState("eth0", (LL, GLOBAL)), "global")  # no default route
    assert links.ready(LinkState("eth0", (LL, GLOBAL), True), "global")
    assert not links.ready(LinkState("eth0", (LL, ULA), True), "global")
    assert links.ready(LinkState("eth0", (LL, ULA)), "ula")


@pytest.mark.parametrize(
    ("state", "wait", "expected"),
    [
        (LinkState("eth0", (LL,), False, up=True), "global",
         "no router advertisement received on eth0 within 10s: is radvd running in mux?"),
        (LinkState("eth0", (LL, ULA), True, up=True), "global", "no global prefix on gw0"),
        (LinkState("eth0", (LL, Addr(GLOBAL.address, 64, ifaddr.IFA_F_DADFAILED)), True, up=True),
         "global", "DAD failed for 2001:db8:0:1::5/64 on eth0"),
        (LinkState("eth0", (Addr(LL.address, 64, ifaddr.IFA_F_TENTATIVE),), up=True), "global",
         "no usable link-local address"),
        (LinkState("eth0", (LL, Addr(GLOBAL.address, 64, ifaddr.IFA_F_TENTATIVE)), True, up=True),
         "global", "2001:db8:0:1::5/64 (tentative)"),
        (LinkState("eth0", (LL, GLOBAL), False, up=True), "global", "no default route on eth0"),
        (LinkState("eth0"), "global", "eth0 is not up"),
    ],
)  # fmt: skip
def test_missing_says_what(state: LinkState, wait: str, expected: str) -> None:
    msg = links.missing(state, wait, 10.0, "gw0")
    assert expected in msg
    assert "\n" not in msg


def test_required_static_addresses() -> None:
    static = IPv6Address("fd64:cafe::53")
    tentative = Addr(static, 64, ifaddr.IFA_F_TENTATIVE)
    optimistic = Addr(static, 64, ifaddr.IFA_F_TENTATIVE | ifaddr.IFA_F_OPTIMISTIC)
    st = LinkState("eth0", (LL, GLOBAL, tentative), True, up=True)
    assert not links.ready(st, "global", (static,))
    assert "static address fd64:cafe::53 (tentative) on eth0" in links.missing(
        st, "global", 10, "gw0", (static,)
    )
    assert links.ready(LinkState("eth0", (LL, GLOBAL, optimistic), True), "global", (static,))
    assert not links.ready(LinkState("eth0", (LL,)), "none", (static,))


def test_drain_reports_new_link_local_addresses() -> None:
    import socket
    import struct

    def msg(mtype: int, family: int, scope: int, index: int) -> bytes:
        body = struct.pack("=BBBBI", family, 64, 0, scope, index) + b"\0" * 4
        return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        a.send(msg(links.RTM_NEWADDR, socket.AF_INET6, links.RT_SCOPE_LINK, 7)
               + msg(links.RTM_NEWADDR, socket.AF_INET6, 0, 8)
               + msg(21, socket.AF_INET6, links.RT_SCOPE_LINK, 9))  # fmt: skip
        a.send(msg(links.RTM_NEWADDR, socket.AF_INET, links.RT_SCOPE_LINK, 10))
        assert links._drain(b) == {7}
        assert links._drain(b) == set()


# --- routed links -------------------------------------------------------------------------


@pytest.mark.skipif(sys.byteorder != "little", reason="the identifier is in the CPU's byte order")
def test_stable_address_is_the_kernels() -> None:
    """The value Linux 6.x made for this secret's link-local address on a veth with a set
    MAC (tests/netns/test_routed_netns.py checks the global and ULA ones against the kernel)."""
    from ipaddress import IPv6Network

    secret = "2001:db8:1234:5678:9abc:def0:1111:2222"
    assert links.stable_address(IPv6Network("fe80::/64"), secret) == IPv6Address(
        "fe80::cd59:e762:a806:1c"
    )
    other = links.stable_address(IPv6Network("2001:db8:0:1::/64"), secret)
    assert other in IPv6Network("2001:db8:0:1::/64") and other.packed[8:] != bytes(8)
    with pytest.raises(ValueError, match="/64"):
        links.stable_address(IPv6Network("2001:db8::/48"), secret)


def test_reserved_identifiers_are_skipped() -> None:
    assert names._reserved_iid(bytes(8))
    assert names._reserved_iid(bytes.fromhex("02005efffe000001"))
    assert names._reserved_iid(bytes.fromhex("fdffffffffffff80"))
    assert not names._reserved_iid(bytes.fromhex("fdffffffffffff7f"))


def test_advertised_prefixes_global_then_ula_without_deprecated() -> None:
    from ipaddress import IPv6Network

    gw = LinkState(
        "gw0",
        (
            LL,
            Addr(IPv6Address("2001:db8:0:1::1"), 64, 0),
            Addr(IPv6Address("2001:db8:0:2::1"), 64, ifaddr.IFA_F_DEPRECATED),
            Addr(IPv6Address("2001:db8:0:3::1"), 56, 0),
            ULA,
        ),
    )
    assert links.advertised_prefixes(gw, IPv6Network("fd64:cafe::/64")) == (
        IPv6Network("2001:db8:0:1::/64"),
        IPv6Network("fd64:cafe::/64"),
    )


def test_routed_ends_take_no_router_adverts() -> None:
    wl = dict(links.routed_workload_sysctls("eth0", "::1", 100))
    assert wl["net.ipv6.conf.eth0.accept_ra"] == "0"
    assert wl["net.ipv6.conf.eth0.autoconf"] == "0"
    assert next(iter(wl)) == "net.ipv6.conf.eth0.stable_secret"
    mux = dict(links.routed_mux_sysctls("nmabc", "gw0"))
    assert mux["net.ipv6.conf.nmabc.accept_ra"] == "0"
    assert mux["net.ipv6.conf.nmabc.forwarding"] == "1"
    assert mux["net.ipv6.conf.gw0.proxy_ndp"] == "1"
    assert mux["net.ipv6.neigh.gw0.proxy_delay"] == "0"
