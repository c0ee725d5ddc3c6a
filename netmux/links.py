"""Links and namespaces through pyroute2: named netns, macvlan/macvtap, sysctls, waiting.

Everything here acts on the kernel; the decisions (which sysctls, in which order, what
counts as "usable") are small pure functions next to the code that applies them, so they
can be unit-tested.

Speed matters (`netmux up` is on the critical path of every workload start), so:
- the requests of `up`, `down` and `status` go through rtnl.py's small client, not
  pyroute2 (whose IPRoute the handle still offers for everything else);
- a netlink socket for another namespace is opened by a short thread that entered it
  (~1 ms) instead of pyroute2's fork (~6 ms);
- a workload's link is created by one request on mux's socket with the target namespace
  and the final name (IFLA_NET_NS_FD + IFLA_IFNAME): the kernel looks the parent up in
  mux and registers the device directly in the workload's namespace. There is no moment
  at which the link sits in mux under a temporary name, so nothing can be left there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from . import names, nsutil
from .errors import NetmuxError, StateError
from .ifaddr import (
    IFA_F_DADFAILED,
    IFA_F_DEPRECATED,
    IFA_F_NODAD,
    IFA_F_OPTIMISTIC,
    IFA_F_TENTATIVE,
)
from .rtnl import Link, NetlinkError, Rtnl

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400


ULA = IPv6Network("fc00::/7")
LINK_LOCAL = IPv6Network("fe80::/10")


class WaitError(NetmuxError):
    """The workload's link came up but what it waits for did not arrive in time."""


# --- sockets and namespaces -------------------------------------------------------------


def open_ipr(netns: str | int | None = None) -> Rtnl:
    """A route netlink handle whose socket lives in `netns` (None: the caller's namespace):
    rtnl.Rtnl, which is also pyroute2's IPRoute API for what it does not do itself. Use it
    from the thread that opened it (pyroute2 keeps per-thread state).
    """

    def make() -> int:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        return s.detach()

    fd = nsutil.run_in_netns(netns, make) if netns is not None and netns != "" else make()
    return Rtnl(fd)


@contextlib.contextmanager
def _rt(ipr: Any) -> Iterator[Rtnl]:
    """`ipr` as an Rtnl: itself, or (a pyroute2 IPRoute of a caller's own) its socket."""
    if isinstance(ipr, Rtnl):
        yield ipr
        return
    rt = Rtnl(os.dup(ipr.fileno()))
    try:
        yield rt
    finally:
        rt.close()


@contextlib.contextmanager
def iproute(netns: str | int | None = None) -> Iterator[Any]:  # Rtnl, used as IPRoute too
    ipr = open_ipr(netns)
    try:
        yield ipr
    finally:
        ipr.close()


def netns_exists(name: str) -> bool:
    return nsutil.netns_path(name).exists()


def create_netns(name: str) -> None:
    """Create /run/netns/NAME; StateError if it exists."""
    os.close(create_marked_netns(name, None))


def create_marked_netns(name: str, mark: str | None) -> int:
    """Create /run/netns/NAME carrying `mark` (see set_mark) from before it has a name;
    an open fd of it. StateError if the name exists."""
    try:
        return nsutil.create_named_netns(name, (lambda: set_mark(mark)) if mark else None)
    except FileExistsError:
        raise StateError(f"network namespace {name!r} already exists") from None


# A namespace netmux made carries MARK_PREFIX + its instance token as the alias of its
# loopback: a kernel object that lives exactly as long as the namespace, set before the
# namespace gets its name, readable by `ip -n NAME link show lo` (alias ...).
MARK_PREFIX = "netmux:"


def set_mark(mark: str) -> None:
    """Mark the calling thread's namespace (its loopback's alias)."""
    with iproute() as ipr:
        ipr.link_set(1, ifalias=mark)  # lo is always ifindex 1 in its namespace


def read_mark(netns: str | int) -> str | None:
    """The alias of `netns`'s loopback, or None (no alias, or no such namespace)."""
    if nsutil.netns_id(netns) is None:
        return None
    try:
        with iproute(netns) as ipr:
            alias = ipr.link_get(1).alias  # lo
    except (OSError, ValueError):
        return None
    return alias or None


def remove_netns(name: str) -> bool:
    """Remove /run/netns/NAME (idempotent). The kernel frees it when its last user goes."""
    return nsutil.remove_named_netns(name)


def link_index(ipr: Any, ifname: str) -> int | None:
    with _rt(ipr) as rt:
        return rt.link_index(ifname)


def link_info(ipr: Any, ifname: str) -> dict[str, Any] | None:
    """kind, mac, index, state of a link, or None."""
    with _rt(ipr) as rt:
        idx = rt.link_index(ifname)
        if idx is None:
            return None
        try:
            link = rt.link_get(idx)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
    return {
        "index": idx,
        "ifname": ifname,
        "kind": link.kind,
        "mac": link.mac,
        "up": bool(link.flags & IFF_UP),
        "operstate": OPERSTATES.get(link.operstate or 0, "UNKNOWN"),
    }


def delete_link(ipr: Any, ifname: str) -> bool:
    """Delete a link by name (synchronous in the kernel); False if it was not there."""
    with _rt(ipr) as rt:
        idx = rt.link_index(ifname)
        if idx is None:
            return False
        try:
            rt.link_del(idx)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise
    return True


def set_up(ipr: Any, ifname: str) -> None:
    with _rt(ipr) as rt:
        idx = rt.link_index(ifname)
        if idx is None:
            raise StateError(f"link {ifname} does not exist")
        rt.link_set(idx, IFF_UP, IFF_UP)


def replace_route(ipr: Any, dst: str, ifname: str) -> None:
    """`ip route replace DST dev IFNAME` (IPv4 or IPv6 by the form of DST)."""
    idx = link_index(ipr, ifname)
    if idx is None:
        raise StateError(f"link {ifname} does not exist")
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    try:
        ipr.route("replace", dst=dst, oif=idx, family=family)
    except NetlinkError as e:
        raise StateError(f"cannot route {dst} via {ifname}: {e.args[1]}") from e


# --- workload links ---------------------------------------------------------------------


IFF_UP, IFF_ALLMULTI = 0x1, 0x200
# IFLA_OPERSTATE values (RFC 2863), named as pyroute2 names them
OPERSTATES = {0: "UNKNOWN", 1: "NOTPRESENT", 2: "DOWN", 3: "LOWERLAYERDOWN", 4: "TESTING",
              5: "DORMANT", 6: "UP"}  # fmt: skip
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20


def child_link_flags(kind: str) -> dict[str, int]:
    """Link flags a new child link is created with (pyroute2 `flags`/`change`). Pure.

    A macvtap gets allmulticast: its host side has IPv6 disabled, so the kernel's multicast
    filter lists only all-nodes, and the neighbour solicitations for the guest's
    solicited-node groups are dropped (the guest is unreachable). The guest's groups cannot
    be mirrored from outside (every address it makes, stable-privacy and temporary ones
    included, adds one) and the guest's NIC filters what it does not want, so all multicast
    goes through: on a home LAN that is a few frames a second.
    """
    if kind == "macvtap":
        return {"flags": IFF_ALLMULTI, "change": IFF_ALLMULTI}
    return {}


def create_child_link(
    mux_ipr: Any,
    parent: str,
    ifname: str,
    mac: str,
    kind: str = "macvlan",
    target_netns: str | int | None = None,
) -> None:
    """A macvlan/macvtap in bridge mode (an ipvlan in L2 mode) on `parent` (in mux),
    registered in `target_netns`.

    None keeps it in mux itself (gw0). Raises StateError with the reason on failure.
    """
    parent_idx = link_index(mux_ipr, parent)
    if parent_idx is None:
        raise StateError(f"parent link {parent} is missing in mux: run `netmux mux up`")
    flags = child_link_flags(kind) if kind != "ipvlan" else {}
    by_name = isinstance(target_netns, str)
    fd = nsutil.open_netns(target_netns) if isinstance(target_netns, str) else target_netns
    try:
        with _rt(mux_ipr) as rt:
            rt.link_add_child(ifname, kind, parent_idx, mac, flags.get("flags", 0),
                              flags.get("change", 0), net_ns_fd=fd)  # fmt: skip
    except NetlinkError as e:
        where = f" in netns {target_netns}" if by_name else ""
        raise StateError(f"cannot create {kind} {ifname}{where} on {parent}: {e.args[1]}") from e
    finally:
        if by_name and fd is not None:
            os.close(fd)


def workload_sysctls(
    ifname: str, secret: str, optimistic: bool, retrans_time_ms: int
) -> list[tuple[str, str]]:
    """Per-interface settings for a workload link, in the order they must be written. Pure.

    Written inside the workload's namespace before link up (a new namespace does not
    inherit the init namespace's `default.*`). stable_secret comes first: writing it
    switches the interface to addr_gen_mode 2 (stable privacy); setting the mode first
    fails with EINVAL. The neighbour timer paces DAD and solicitations, which is what makes
    a workload usable in ~0.1 s instead of ~3 s (docs/platform.md).
    """
    conf = f"net.ipv6.conf.{ifname}"
    items = [
        (f"{conf}.stable_secret", secret),
        (f"{conf}.addr_gen_mode", "2"),
        (f"{conf}.forwarding", "0"),
        (f"{conf}.accept_ra", "1"),
        (f"{conf}.autoconf", "1"),
        (f"{conf}.accept_dad", "1"),
    ]
    if optimistic:
        items += [(f"{conf}.optimistic_dad", "1"), (f"{conf}.use_optimistic", "1")]
    items += [
        (f"{conf}.router_solicitation_delay", "0"),
        (f"net.ipv6.neigh.{ifname}.retrans_time_ms", str(retrans_time_ms)),
        (f"{conf}.ndisc_notify", "1"),
    ]
    return items


def add_addresses(
    ipr: Any,
    ifname: str,
    addrs: tuple[IPv6Interface, ...],
    nodad: bool = False,
    optimistic: bool = False,
) -> None:
    """Static addresses. `optimistic` (RFC 4429, like SLAAC ones with optimistic_dad) lets a
    daemon bind them at once (e.g. a resolver on fd64:cafe::53) while DAD still runs."""
    flags = IFA_F_NODAD if nodad else IFA_F_OPTIMISTIC if optimistic else 0
    with _rt(ipr) as rt:
        idx = rt.link_index(ifname)
        if idx is None:
            raise StateError(f"link {ifname} does not exist")
        for a in addrs:
            try:
                rt.addr_add(idx, a.ip.packed, a.network.prefixlen, flags)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise StateError(f"cannot add address {a} to {ifname}: {e.args[1]}") from e


# --- addresses: what is usable ----------------------------------------------------------


@dataclass(frozen=True)
class Addr:
    address: IPv6Address
    prefixlen: int
    flags: int

    @property
    def is_ula(self) -> bool:
        return self.address in ULA

    @property
    def is_link_local(self) -> bool:
        return self.address in LINK_LOCAL

    @property
    def is_global(self) -> bool:
        return self.address.is_global or (
            not self.is_ula and not self.is_link_local and not self.address.is_loopback
        )

    @property
    def dadfailed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)

    def usable(self) -> bool:
        """Can a packet leave from it now? (optimistic counts: RFC 4429)."""
        if self.flags & (IFA_F_DADFAILED | IFA_F_DEPRECATED):
            return False
        return not (self.flags & IFA_F_TENTATIVE) or bool(self.flags & IFA_F_OPTIMISTIC)

    def state(self) -> str:
        if self.dadfailed:
            return "dadfailed"
        if self.flags & IFA_F_DEPRECATED:
            return "deprecated"
        if self.flags & IFA_F_OPTIMISTIC:
            return "optimistic"
        if self.flags & IFA_F_TENTATIVE:
            return "tentative"
        return "ok"

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True)
class LinkState:
    """What one interface has, as far as waiting and status care."""

    ifname: str
    addrs: tuple[Addr, ...] = ()
    default_route: bool = False
    mac: str | None = None
    up: bool = False

    @property
    def global_addrs(self) -> tuple[Addr, ...]:
        return tuple(a for a in self.addrs if a.is_global)

    @property
    def ula_addrs(self) -> tuple[Addr, ...]:
        return tuple(a for a in self.addrs if a.is_ula)

    @property
    def link_local(self) -> tuple[Addr, ...]:
        return tuple(a for a in self.addrs if a.is_link_local)


def _required_ok(state: LinkState, required: tuple[IPv6Address, ...]) -> bool:
    have = {a.address: a for a in state.addrs}
    return all(r in have and have[r].usable() for r in required)


def ready(state: LinkState, wait: str, required: tuple[IPv6Address, ...] = ()) -> bool:
    """Has the link what `wait` ("global", "ula", "none") asks for, and are the `required`
    (static) addresses usable? Pure."""
    if not _required_ok(state, required):
        return False
    if wait == "none":
        return True
    if wait == "ula":
        return any(a.usable() for a in state.ula_addrs)
    return state.default_route and any(a.usable() for a in state.global_addrs)


def missing(
    state: LinkState,
    wait: str,
    timeout: float,
    mux_gateway: str,
    required: tuple[IPv6Address, ...] = (),
) -> str:
    """One line saying what did not arrive: for the error when waiting times out. Pure."""
    ifn = state.ifname
    failed = [a for a in state.addrs if a.dadfailed]
    if failed:
        return (
            f"DAD failed for {', '.join(str(a) for a in failed)} on {ifn}: another node "
            "uses this address (is an old instance of this workload still running?)"
        )
    if not _required_ok(state, required):
        have = {a.address: a for a in state.addrs}
        bad = [
            f"{r} ({have[r].state() if r in have else 'missing'})"
            for r in required
            if r not in have or not have[r].usable()
        ]
        return f"static address {', '.join(bad)} on {ifn} not usable within {timeout:g}s"
    if not state.up:
        return f"{ifn} is not up within {timeout:g}s"
    if not state.link_local or not any(a.usable() for a in state.link_local):
        return f"{ifn} has no usable link-local address within {timeout:g}s (DAD still running?)"
    have_prefix = state.global_addrs if wait == "global" else state.ula_addrs
    if not have_prefix and not state.default_route and not state.ula_addrs:
        return (
            f"no router advertisement received on {ifn} within {timeout:g}s: "
            "is radvd running in mux?"
        )
    if not have_prefix:
        what = "global" if wait == "global" else "ULA"
        return (
            f"no {what} prefix on {mux_gateway}: router advertisements on {ifn} carry "
            f"no {what} /64 within {timeout:g}s"
            + (" (no DHCPv6 prefix delegation yet?)" if wait == "global" else "")
        )
    if not any(a.usable() for a in have_prefix):
        addrs = ", ".join(f"{a} ({a.state()})" for a in have_prefix)
        return f"no usable address on {ifn} within {timeout:g}s: {addrs}"
    return f"no default route on {ifn} within {timeout:g}s (router lifetime 0 in the RA?)"


def link_state(ipr: Any, ifname: str) -> LinkState:
    """Addresses (IPv6), default route, MAC and up-ness of `ifname` in ipr's namespace."""
    with _rt(ipr) as rt:
        idx = rt.link_index(ifname)
        if idx is None:
            return LinkState(ifname)
        try:
            link: Link | None = rt.link_get(idx)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise
            link = None
        addrs = _addrs(rt, idx)
        default = any(
            r.dst_len == 0 and r.table in (None, 254) and idx in r.oifs
            for r in rt.route_dump(socket.AF_INET6)
        )
    return LinkState(
        ifname,
        addrs,
        default,
        link.mac if link else None,
        bool(link and link.flags & IFF_UP),
    )


def link_addrs(ipr: Any, ifname: str) -> LinkState:
    """Only the IPv6 addresses of `ifname` (no route dump: for mux's gateway, whose
    namespace holds a route per routed workload)."""
    idx = link_index(ipr, ifname)
    return LinkState(ifname, _addrs(ipr, idx) if idx is not None else ())


def _addrs(ipr: Any, idx: int) -> tuple[Addr, ...]:
    with _rt(ipr) as rt:
        addrs = [
            Addr(IPv6Address(a.address), a.prefixlen, a.flags)
            for a in rt.addr_dump(socket.AF_INET6)
            if a.index == idx and len(a.address) == 16
        ]
    return tuple(sorted(addrs, key=lambda a: (a.address.packed, a.prefixlen)))


def event_socket(groups: int) -> socket.socket:
    """A raw rtnetlink socket subscribed to `groups`, in the calling thread's namespace.

    Bound before the first request so that no event between "check" and "wait" is lost;
    used only as a wake-up (its content is not parsed: the state is re-read by dump).
    """
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((0, groups))
    s.setblocking(False)
    return s


RTM_NEWADDR = 20
RT_SCOPE_LINK = 253
_NLMSG = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")


def _drain(s: socket.socket) -> set[int]:
    """Empty the event socket; return the ifindexes that got a new link-local address."""
    new_ll: set[int] = set()
    with contextlib.suppress(BlockingIOError):
        while True:
            data = s.recv(65536)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype = _NLMSG.unpack_from(data, off)[:2]
                if length < _NLMSG.size:
                    break
                if mtype == RTM_NEWADDR and off + _NLMSG.size + _IFADDRMSG.size <= len(data):
                    family, _, _, scope, index = _IFADDRMSG.unpack_from(data, off + _NLMSG.size)
                    if family == socket.AF_INET6 and scope == RT_SCOPE_LINK:
                        new_ll.add(index)
                off += (length + 3) & ~3
    return new_ll


ALL_ROUTERS = "ff02::2"
ND_ROUTER_SOLICIT = 133


def rs_socket(ifname: str) -> socket.socket:
    """A raw ICMPv6 socket on `ifname` for one early router solicitation (see send_rs).

    Open it in the interface's namespace (a thread that entered it)."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # RFC 4861 4.1
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    s.setblocking(False)
    return s


def send_rs(sock: socket.socket, ifindex: int) -> bool:
    """Send a Router Solicitation now, from the (optimistic) link-local address.

    Linux sends its own RS only once link-local DAD has finished (one RetransTimer,
    ~0.1 s here). RFC 4429 (3.2, modifying RFC 4861 6.3.7) lets an optimistic node send
    an RS from its optimistic address as long as it carries no source link-layer address
    option; this one carries no option at all, so radvd answers by unicast at once (it
    resolves our address by NS, which an optimistic address answers). The kernel's own RS
    still follows, so nothing is lost if this one is. Returns False if it could not go.
    """
    icmp = bytes([ND_ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0])  # checksum: the kernel's job
    try:
        sock.sendto(icmp, (ALL_ROUTERS, 0, 0, ifindex))
    except OSError:
        return False  # no usable source address yet: the kernel's RS will do
    return True


def wait_ready(
    ipr: Any,
    events: socket.socket,
    ifname: str,
    wait: str,
    timeout: float,
    mux_gateway: str = "gw0",
    required: tuple[IPv6Address, ...] = (),
    solicit: socket.socket | None = None,
) -> LinkState:
    """Wait until `ifname` is ready for `wait`; WaitError naming what is missing otherwise.

    `events` must have been bound (event_socket) before the link went up. With `solicit`
    (rs_socket), one early RS goes out as soon as the link-local address is usable
    (optimistic) *and* announced by RTM_NEWADDR: the kernel announces an optimistic
    address only after joining its solicited-node group, so the router's NS for it is
    not lost to the macvlan multicast filter (a dump lists the address earlier).
    """
    deadline = time.monotonic() + timeout
    solicited = solicit is None or wait == "none"
    idx = link_index(ipr, ifname) if not solicited else None
    announced = False
    while True:
        announced |= idx in _drain(events)
        state = link_state(ipr, ifname)
        if ready(state, wait, required):
            return state
        if not solicited and announced and any(a.usable() for a in state.link_local):
            solicited = send_rs(solicit, idx)  # type: ignore[arg-type]
        if any(a.dadfailed for a in state.addrs):
            raise WaitError(missing(state, wait, timeout, mux_gateway, required))
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitError(missing(state, wait, timeout, mux_gateway, required))
        select.select([events], [], [], min(left, 0.5))


# --- per-namespace helpers ---------------------------------------------------------------


def sysctl_write(netns: str | int | None, items: list[tuple[str, str]]) -> None:
    """Write sysctls inside `netns` in order, naming the one that failed."""

    def apply() -> None:
        for key, value in items:
            try:
                nsutil.sysctl_path(key).write_text(f"{value}\n")
            except OSError as e:
                raise StateError(f"cannot set {key}={value}: {e.strerror}") from e

    nsutil.run_in_netns(netns, apply)


def neighbours_with_mac(ipr: Any, ifname: str, mac: str) -> list[IPv6Address]:
    """IPv6 neighbours of `ifname` whose link-layer address is `mac` and that answered
    (not FAILED/INCOMPLETE): in mux, the addresses a VM guest has been seen using."""
    idx = link_index(ipr, ifname)
    if idx is None:
        return []
    out = []
    for n in ipr.get_neighbours(family=socket.AF_INET6, ifindex=idx):
        if (n.get_attr("NDA_LLADDR") or "").lower() != mac.lower():
            continue
        if n["state"] & (NUD_FAILED | NUD_INCOMPLETE):
            continue
        ip = IPv6Address(n.get_attr("NDA_DST"))
        if not (ip.is_link_local or ip.is_multicast):
            out.append(ip)
    return sorted(out)


def split_addresses(addrs: tuple[Addr, ...]) -> dict[str, list[str]]:
    """{"global": [...], "ula": [...], "link_local": [...]} with each address' state."""
    out: dict[str, list[str]] = {"global": [], "ula": [], "link_local": []}
    for a in addrs:
        key = "ula" if a.is_ula else "link_local" if a.is_link_local else "global"
        out[key].append(str(a) + ("" if a.state() == "ok" else f" ({a.state()})"))
    return out


# --- routed links ------------------------------------------------------------------------
#
# A routed workload's link is its own: a veth whose other end (names.mux_link_name) is in
# mux, where the workload cannot touch it. The workload's end holds /128s of the addresses
# it would have made by SLAAC on the segment (stable_address: the kernel's own algorithm,
# so its names keep their addresses) and a default route via ROUTED_GATEWAY on mux's end;
# mux routes each /128 to the veth and answers neighbour solicitations for it on the
# gateway (proxy NDP), so the segment and upstream still reach it. Nothing the workload
# sends reaches a neighbour's link: RAs, redirects, forged MACs and sources stop at mux's
# filter on its end of the veth (firewall.render_routed).

ROUTED_GATEWAY = IPv6Address("fe80::1")
NTF_PROXY = 0x08


def stable_address(prefix: IPv6Network, secret: str, dad_count: int = 0) -> IPv6Address:
    """The address Linux makes by SLAAC in /64 `prefix` on a link with `stable_secret`
    whose MAC netmux set (names.stable_privacy_address, the kernel's algorithm). Pure;
    tests/netns/test_routed_netns.py checks it against the kernel's own addresses."""
    if prefix.prefixlen != 64:
        raise ValueError(f"SLAAC needs a /64, not {prefix}")
    return names.stable_privacy_address(secret, str(prefix), dad_count)


def advertised_prefixes(gateway: LinkState, ula: IPv6Network) -> tuple[IPv6Network, ...]:
    """The /64s radvd advertises from the gateway's addresses (its global, preferred /64s,
    as renumber.gateway_leases reads them) and the ULA, global first. Pure."""
    nets = [
        IPv6Network(f"{a.address}/64", strict=False)
        for a in gateway.global_addrs
        if a.prefixlen == 64 and not a.flags & IFA_F_DEPRECATED
    ]
    if ula.prefixlen == 64:
        nets.append(ula)
    return tuple(dict.fromkeys(nets))


def routed_workload_sysctls(
    ifname: str, secret: str, retrans_time_ms: int
) -> list[tuple[str, str]]:
    """The workload's end of a routed link: the same stable link-local as on the segment,
    no router discovery, no SLAAC, no DAD (mux's end has fe80::1 only), no redirects. Pure."""
    conf = f"net.ipv6.conf.{ifname}"
    return [
        (f"{conf}.stable_secret", secret),
        (f"{conf}.addr_gen_mode", "2"),
        (f"{conf}.forwarding", "0"),
        (f"{conf}.accept_ra", "0"),
        (f"{conf}.autoconf", "0"),
        (f"{conf}.accept_dad", "0"),
        (f"{conf}.accept_redirects", "0"),
        (f"net.ipv6.neigh.{ifname}.retrans_time_ms", str(retrans_time_ms)),
    ]


def routed_mux_sysctls(peer: str, gateway: str) -> list[tuple[str, str]]:
    """mux's end of a routed link and the gateway's proxy NDP, in mux. Pure.

    The end gets no address of its own making (addr_gen_mode 1: only ROUTED_GATEWAY) and
    ignores router adverts and redirects whatever comes down the veth. proxy_delay 0: a
    proxied solicitation is answered at once, not after up to 0.8 s."""
    conf = f"net.ipv6.conf.{peer}"
    return [
        (f"{conf}.addr_gen_mode", "1"),
        (f"{conf}.accept_ra", "0"),
        (f"{conf}.accept_redirects", "0"),
        (f"{conf}.accept_dad", "0"),
        (f"{conf}.forwarding", "1"),
        (f"net.ipv6.conf.{gateway}.proxy_ndp", "1"),
        (f"net.ipv6.neigh.{gateway}.proxy_delay", "0"),
    ]


def create_routed_link(mux_ipr: Any, peer: str, ifname: str, mac: str, target_netns: int) -> None:
    """A veth: `peer` in mux (where mux_ipr lives), `ifname` with `mac` in `target_netns`.
    StateError with the reason on failure. mux's end is created down."""
    try:
        mux_ipr.link(
            "add",
            ifname=peer,
            kind="veth",
            peer={"ifname": ifname, "address": mac, "net_ns_fd": target_netns},
        )
    except NetlinkError as e:
        raise StateError(f"cannot create veth {peer} (mux) / {ifname}: {e.args[1]}") from e


def route_workload(mux_ipr: Any, peer: str, gateway: str, addrs: tuple[IPv6Address, ...]) -> None:
    """In mux: ROUTED_GATEWAY on the veth, up, a /128 route and a proxy entry on the
    gateway for every address of the workload."""
    idx = link_index(mux_ipr, peer)
    gw_idx = link_index(mux_ipr, gateway)
    if idx is None or gw_idx is None:
        raise StateError(f"link {peer if idx is None else gateway} is missing in mux")
    add_addresses(mux_ipr, peer, (IPv6Interface(f"{ROUTED_GATEWAY}/64"),), nodad=True)
    mux_ipr.link("set", index=idx, state="up")
    for a in addrs:
        try:
            mux_ipr.route("replace", dst=f"{a}/128", oif=idx, family=socket.AF_INET6)
            mux_ipr.neigh("replace", dst=str(a), ifindex=gw_idx, flags=NTF_PROXY,
                          family=socket.AF_INET6)  # fmt: skip
        except NetlinkError as e:
            raise StateError(f"cannot route {a} to {peer} in mux: {e.args[1]}") from e


def unroute_workload(
    mux_ipr: Any, gateway: str, addrs: tuple[IPv6Address, ...], routes: bool = False
) -> bool:
    """Remove the gateway's proxy entries for `addrs` and, with `routes`, their /128
    routes (without: they went with the veth); True if any was there. Idempotent."""
    gw_idx = link_index(mux_ipr, gateway)
    if gw_idx is None:
        return False
    did = False
    for a in addrs:
        if routes:
            with contextlib.suppress(NetlinkError):
                mux_ipr.route("del", dst=f"{a}/128", family=socket.AF_INET6)
        try:
            mux_ipr.neigh("del", dst=str(a), ifindex=gw_idx, flags=NTF_PROXY,
                          family=socket.AF_INET6)  # fmt: skip
            did = True
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.ESRCH):
                raise
    return did


def default_via_gateway(ipr: Any, ifname: str) -> None:
    """The workload's default route via mux's end of its routed link."""
    idx = link_index(ipr, ifname)
    if idx is None:
        raise StateError(f"link {ifname} does not exist")
    try:
        ipr.route("replace", dst="::/0", gateway=str(ROUTED_GATEWAY), oif=idx,
                  family=socket.AF_INET6)  # fmt: skip
    except NetlinkError as e:
        raise StateError(f"cannot add the default route on {ifname}: {e.args[1]}") from e


def deprecate_addresses(ipr: Any, ifname: str, addrs: tuple[IPv6Address, ...]) -> None:
    """Preferred lifetime 0 for routed /128s (what a deprecated prefix's RA does to a
    SLAAC address): still answered, no longer chosen as a source for new connections."""
    idx = link_index(ipr, ifname)
    for a in addrs if idx is not None else ():
        ipr.addr("replace", index=idx, address=str(a), prefixlen=128, flags=IFA_F_NODAD,
                 preferred_lft=0, valid_lft=0xFFFFFFFF)  # fmt: skip


def remove_addresses(ipr: Any, ifname: str, addrs: tuple[IPv6Address, ...]) -> None:
    idx = link_index(ipr, ifname)
    for a in addrs if idx is not None else ():
        with contextlib.suppress(NetlinkError):
            ipr.addr("del", index=idx, address=str(a), prefixlen=128)
