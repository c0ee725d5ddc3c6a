"""What the phonebook checks before it believes a caller that is not root.

Root (netmux up, the units) is trusted. Anyone else — a member of group netmux, typically
root only inside its own user namespace — can make its namespace say anything: interfaces
of any kind, any address with `nodad`. So for them the phonebook publishes only what it
can verify from outside:

- the name is not reserved: not a configured workload (WORKLOADS_DIR/NAME.toml) and not a
  namespace under /run/netns (a workload that runs or is about to);
- the interface is one netmux or ipmuxd made: a macvlan/macvtap/ipvlan whose parent is
  mux's parent link, in mux's namespace (nobody else can create a device there), or a
  routed veth whose other end is in mux under a routed link's name (netmux/routed.py);
- only addresses inside the prefixes mux's gateway has (what radvd advertises) and the
  ULA, and only after DAD ran (no `nodad`), so another workload on the segment defends
  its address; on a routed veth, where DAD proves nothing, only the addresses mux routes
  to it (routed_addresses);
- limits per user on publications and on file descriptors held for it.

The checks on data are pure functions; `device_ifindex` is the one netlink edge.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from .. import nsutil
from ..ifaddr import IFA_F_NODAD
from .errors import Denied
from .records import Address

DEVICE_KINDS = ("macvlan", "macvtap", "ipvlan")
ROUTED_PEER = re.compile(r"nm[0-9a-f]{12}")  # names.mux_link_name, ipmuxd.routed_peer


def reserved(label: str, workloads_dir: Path, netns_dir: Path = nsutil.NETNS_DIR) -> str:
    """Why `label` belongs to a workload ('' if it does not): its config or its netns."""
    if (workloads_dir / f"{label}.toml").exists():
        return f"{label!r} is a configured workload ({workloads_dir}/{label}.toml)"
    if (netns_dir / label).exists():
        return f"{label!r} is a workload's network namespace ({netns_dir}/{label})"
    return ""


def trusted_addresses(
    addresses: Iterable[Address], prefixes: Iterable[IPv6Network]
) -> tuple[Address, ...]:
    """The addresses of an unprivileged publication that may be published. Pure."""
    nets = tuple(prefixes)
    return tuple(
        a
        for a in addresses
        if isinstance(a.ip, IPv6Address)
        and not a.flags & IFA_F_NODAD
        and any(a.ip in net for net in nets)
    )


def advertised(addresses: Iterable[Address], ula: IPv6Network) -> tuple[IPv6Network, ...]:
    """The prefixes a workload may have addresses in: the gateway's /64s and the ULA. Pure."""
    nets = [ula]
    for a in addresses:
        if isinstance(a.ip, IPv6Address) and not a.ip.is_link_local and a.prefixlen >= 48:
            nets.append(IPv6Network(f"{a.ip}/{a.prefixlen}", strict=False))
    return tuple(dict.fromkeys(nets))


def over_limit(held: int, limit: int, what: str, uid: int) -> str:
    """The error for a user at its limit ('' below it). Pure."""
    if held >= limit:
        return f"uid {uid} already holds {held} {what} (at most {limit} per user)"
    return ""


def device_ifindex(nsfd: int, ifname: str, muxfd: int, parent: str) -> int:
    """The ifindex of `ifname` in the namespace behind nsfd if mux's `parent` is its parent
    (so netmux or ipmuxd created it); Denied otherwise."""
    from pyroute2 import IPRoute

    def parent_index() -> int:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=parent)
            return int(found[0]) if found else -1

    def link() -> tuple[int, str, int | None, int | None, int | None]:
        with IPRoute() as ipr:
            links = ipr.get_links(ifname=ifname)
            if not links:
                return -1, "", None, None, None
            lk = links[0]
            info = lk.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
            nsid = (ipr.get_netnsid(fd=muxfd) or {}).get("nsid")
            return (
                lk["index"],
                kind or "",
                lk.get_attr("IFLA_LINK"),
                lk.get_attr("IFLA_LINK_NETNSID"),
                nsid,
            )

    try:
        want = nsutil.run_in_netns(muxfd, parent_index)
        index, kind, parent_idx, link_nsid, mux_nsid = nsutil.run_in_netns(nsfd, link)
    except OSError as e:
        raise Denied(f"cannot check interface {ifname}: {e.strerror or e}") from None
    if index < 0:
        raise Denied(f"interface {ifname} does not exist in the caller's namespace")
    in_mux = kind == "veth" and mux_nsid is not None and mux_nsid >= 0 and link_nsid == mux_nsid
    if in_mux and ROUTED_PEER.fullmatch(_name_in(muxfd, parent_idx) or ""):
        return int(index)  # a routed link: its other end is netmux's or ipmuxd's, in mux
    if (
        kind not in DEVICE_KINDS
        or want < 0
        or mux_nsid is None
        or mux_nsid < 0
        or link_nsid != mux_nsid
        or parent_idx != want
    ):
        raise Denied(
            f"interface {ifname} ({kind or 'unknown kind'}) was not made by netmux or ipmuxd: "
            f"only a {'/'.join(DEVICE_KINDS)} on mux's {parent} may be published"
        )
    return int(index)


def _name_in(netns: int, index: int | None) -> str | None:
    """The name of link `index` in the namespace behind `netns` (None: no such link)."""
    from pyroute2 import IPRoute

    def read() -> str | None:
        with IPRoute() as ipr:
            found = ipr.get_links(index) if index else []
            return str(found[0].get_attr("IFLA_IFNAME")) if found else None

    try:
        return nsutil.run_in_netns(netns, read)
    except Exception:
        return None


def routed_addresses(nsfd: int, ifname: str, muxfd: int) -> frozenset[IPv6Address] | None:
    """The addresses mux routes (as /128s) to the veth `ifname` of a routed link, whose
    other end is in mux; None if `ifname` is no routed veth (then DAD vouches)."""
    from pyroute2 import IPRoute

    def peer() -> tuple[str, int | None]:
        with IPRoute() as ipr:
            found = ipr.get_links(ifname=ifname)
            if not found:
                return "", None
            info = found[0].get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
            return kind or "", found[0].get_attr("IFLA_LINK")

    def routes(index: int) -> frozenset[IPv6Address]:
        with IPRoute() as ipr:
            return frozenset(
                IPv6Address(r.get_attr("RTA_DST"))
                for r in ipr.route("dump", family=socket.AF_INET6)
                if r["dst_len"] == 128 and r.get_attr("RTA_OIF") == index
            )

    kind, index = nsutil.run_in_netns(nsfd, peer)
    if kind != "veth" or not index:
        return None
    return nsutil.run_in_netns(muxfd, lambda: routes(index))
