"""A routed workload link: a veth to mux that is the workload's own (`link = "routed"`).

On the shared macvlan segment a workload that is root in its namespace (or an ipmuxd
member, root in its user namespace) can send what it likes to its siblings: frames
between macvlans never leave the driver, so no filter outside the sender sees them. A
routed workload has no link-layer neighbour but mux: its veth's other end sits in mux,
where mux routes the workload's /128s to it, answers neighbour solicitations for them on
the gateway (proxy NDP) and filters everything the workload sends (firewall.render_routed).
Its addresses are those SLAAC would have given it on the segment (links.stable_address),
so names keep their addresses whichever link a workload has.

This module is the edge: it applies links.py's and firewall.py's pieces in order and
removes them again. Everything is named after the workload (names.mux_link_name), so
`down` finds it with or without a state file.
"""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Interface
from typing import Any

from . import firewall, links, names
from .config import HostConfig, WorkloadConfig
from .errors import StateError


def addresses(
    host: HostConfig, wl: WorkloadConfig, secret: str, wait: str
) -> tuple[IPv6Address, ...]:
    """The workload's addresses: one per advertised /64 (as SLAAC would make it) and its
    static ones. StateError if what `wait` needs is not advertised (no global prefix)."""
    with links.iproute(host.mux.netns) as mipr:
        gw = links.link_addrs(mipr, host.mux.gateway)
    prefixes = links.advertised_prefixes(gw, host.mux.ula.network)
    if wait == "global" and not any(not p.subnet_of(links.ULA) for p in prefixes):
        raise StateError(
            f"workload {wl.name}: no global /64 on {host.mux.gateway} in mux to take a routed "
            'address from (no DHCPv6 prefix delegation yet?); or wait = "ula"'
        )
    derived = [links.stable_address(p, secret) for p in prefixes]
    return tuple(dict.fromkeys([*derived, *(a.ip for a in wl.addresses)]))


def attach(
    host: HostConfig,
    name: str,
    ifname: str,
    mac: str,
    secret: str,
    addrs: tuple[IPv6Address, ...],
    fd: int,
) -> None:
    """Create and wire the veth (workload's end still down): mux's filter first, then
    routes and proxy entries, so nothing passes unfiltered at any moment."""
    peer = names.mux_link_name(name)
    with links.iproute(host.mux.netns) as mipr:
        links.create_routed_link(mipr, peer, ifname, mac, fd)
        links.sysctl_write(host.mux.netns, links.routed_mux_sysctls(peer, host.mux.gateway))
        firewall.apply_routed(host.mux.netns, peer, mac, addrs)
        links.route_workload(mipr, peer, host.mux.gateway, addrs)
    links.sysctl_write(
        fd, links.routed_workload_sysctls(ifname, secret, host.workload.retrans_time_ms)
    )


def addresses_on(ipr: Any, ifname: str, addrs: tuple[IPv6Address, ...]) -> None:
    """Inside the workload (its ipr), before link up: its /128s (nodad: the only other
    end is mux's, which holds ROUTED_GATEWAY alone)."""
    links.add_addresses(ipr, ifname, tuple(IPv6Interface(f"{a}/128") for a in addrs), nodad=True)


def detach(host: HostConfig, name: str, addrs: tuple[IPv6Address, ...]) -> bool:
    """Remove mux's side: the veth end (if the workload's went first, it is gone already),
    its filter table and the proxy entries. Idempotent; True if anything was there."""
    if not links.netns_exists(host.mux.netns):
        return False
    peer = names.mux_link_name(name)
    with links.iproute(host.mux.netns) as mipr:
        did = links.delete_link(mipr, peer)
        did |= links.unroute_workload(mipr, host.mux.gateway, addrs)
    try:
        did |= firewall.remove_routed(host.mux.netns, peer)
    except firewall.NftError as e:
        raise StateError(f"cannot remove table {firewall.routed_table(peer)} in mux: {e}") from e
    return did
