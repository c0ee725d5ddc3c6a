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

import select
import threading
import time
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from typing import Any

from . import firewall, journal, links, names, nsutil, pr2, state
from .config import HostConfig, WorkloadConfig
from .errors import NetmuxError, StateError


def addresses(
    host: HostConfig, wl: WorkloadConfig, secret: str, wait: str
) -> tuple[IPv6Address, ...]:
    """The workload's addresses: one per advertised /64 (as SLAAC would make it) and its
    static ones. StateError if what `wait` needs is not advertised (no global prefix)."""
    derived = derived_addresses(host, secret, f"workload {wl.name}", wait == "global")
    return tuple(dict.fromkeys([*derived, *(a.ip for a in wl.addresses)]))


def derived_addresses(
    host: HostConfig, secret: str, what: str, need_global: bool = True
) -> tuple[IPv6Address, ...]:
    """One address per /64 mux advertises, as SLAAC with `secret` would make it."""
    with links.iproute(host.mux.netns) as mipr:
        gw = links.link_addrs(mipr, host.mux.gateway)
    prefixes = links.advertised_prefixes(gw, host.mux.ula.network)
    if need_global and not any(not p.subnet_of(links.ULA) for p in prefixes):
        raise StateError(
            f"{what}: no global /64 on {host.mux.gateway} in mux to take a routed "
            'address from (no DHCPv6 prefix delegation yet?); or wait = "ula"'
        )
    return tuple(links.stable_address(p, secret) for p in prefixes)


def attach(
    host: HostConfig,
    name: str,
    ifname: str,
    mac: str,
    secret: str,
    addrs: tuple[IPv6Address, ...],
    fd: int,
    peer: str = "",
) -> None:
    """Create and wire the veth (workload's end still down): mux's filter first, then
    routes and proxy entries, so nothing passes unfiltered at any moment. `peer`: mux's
    end (default names.mux_link_name(name))."""
    peer = peer or names.mux_link_name(name)
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


def bring_up(fd: int, ifname: str, addrs: tuple[IPv6Address, ...]) -> None:
    """Inside the namespace behind `fd`: the /128s, lo and the link up, the default route
    (for a caller that cannot do it itself, such as ipmuxd's)."""
    with links.iproute(fd) as ipr:
        addresses_on(ipr, ifname, addrs)
        links.set_up(ipr, "lo")
        links.set_up(ipr, ifname)
        links.default_via_gateway(ipr, ifname)


def detach(host: HostConfig, name: str, addrs: tuple[IPv6Address, ...], peer: str = "") -> bool:
    """Remove mux's side: the veth end (if the workload's went first, it is gone already),
    its filter table and the proxy entries. Idempotent; True if anything was there."""
    if not links.netns_exists(host.mux.netns):
        return False
    peer = peer or names.mux_link_name(name)
    with links.iproute(host.mux.netns) as mipr:
        did = links.delete_link(mipr, peer)
        did |= links.unroute_workload(mipr, host.mux.gateway, addrs)
    try:
        did |= firewall.remove_routed(host.mux.netns, peer)
    except firewall.NftError as e:
        raise StateError(f"cannot remove table {firewall.routed_table(peer)} in mux: {e}") from e
    return did


# --- renumbering -------------------------------------------------------------------------


def readdress(
    secret: str,
    have: tuple[IPv6Address, ...],
    current: tuple[IPv6Network, ...],
    deprecated: tuple[IPv6Network, ...],
) -> tuple[tuple[IPv6Address, ...], tuple[IPv6Address, ...], tuple[IPv6Address, ...]]:
    """(add, deprecate, remove) for a routed workload holding `have` when mux advertises
    `current` and still `deprecated` /64s (the ULA among current). What SLAAC does on the
    segment: an address in a new prefix, the old one deprecated, then gone. Static
    addresses (those that are no prefix's derived one) stay. Pure."""
    want = {links.stable_address(p, secret): p for p in current}
    old = {links.stable_address(p, secret): p for p in deprecated if p not in current}
    add = tuple(a for a in want if a not in have)
    deprecate = tuple(a for a in old if a in have)
    remove = tuple(
        a
        for a in have
        if a not in want
        and a not in old
        and a == links.stable_address(IPv6Network(f"{a}/64", strict=False), secret)
    )
    return add, deprecate, remove


def readdress_link(
    host: HostConfig,
    netns: str | int,
    peer: str,
    ifname: str,
    mac: str,
    secret: str,
    have: tuple[IPv6Address, ...],
    current: tuple[IPv6Network, ...],
    deprecated: tuple[IPv6Network, ...],
) -> tuple[IPv6Address, ...] | None:
    """Bring one routed link (its namespace, mux's end `peer`) to the addresses of
    `current` global /64s and the ULA (readdress); the addresses it holds now, or None if
    nothing changed. New ones are routed and filtered in mux before the workload holds
    them; old ones leave the workload before mux forgets them."""
    nets = (*current, host.mux.ula.network)
    add, deprecate, remove = readdress(secret, have, nets, deprecated)
    if not (add or remove or deprecate):
        return None
    keep = tuple(a for a in have if a not in remove) + add
    firewall.apply_routed(host.mux.netns, peer, mac, (*keep, *remove))
    with links.iproute(host.mux.netns) as mipr:
        links.route_workload(mipr, peer, host.mux.gateway, add)
    with links.iproute(netns) as ipr:
        addresses_on(ipr, ifname, add)
        links.deprecate_addresses(ipr, ifname, deprecate)
        links.remove_addresses(ipr, ifname, remove)
    with links.iproute(host.mux.netns) as mipr:
        links.unroute_workload(mipr, host.mux.gateway, remove, routes=True)
    firewall.apply_routed(host.mux.netns, peer, mac, keep)
    return keep


def renumber_workloads(
    host: HostConfig, current: tuple[IPv6Network, ...], deprecated: tuple[IPv6Network, ...]
) -> list[str]:
    """readdress_link for every routed workload (routed links get no RAs, so this is what
    radvd's advertisement does for a macvlan). The workloads changed."""
    key = names.load_host_key(host.paths.host_key, create=False)
    changed = []
    for name in state.known(host):
        st = state.read_state(host, name) or {}
        if st.get("link") != "routed" or st.get("phase") != "up" or not links.netns_exists(name):
            continue
        have = tuple(IPv6Address(a) for a in st.get("routed") or ())
        ifname = str(st.get("ifname") or host.workload.ifname)
        secret = names.stable_secret(key, name)
        peer = names.mux_link_name(name)
        keep = readdress_link(
            host, name, peer, ifname, str(st["mac"]), secret, have, current, deprecated
        )
        if keep is None:
            continue
        now = state.read_state(host, name) or {}
        if now.get("token") == st.get("token"):  # not taken down (or rebuilt) meanwhile
            now["routed"] = [str(a) for a in keep]
            state.write_state(host, name, now)
        changed.append(name)
    return changed


class Prefixes:
    """The gateway's global /64s as radvd advertises them: current ones, and for
    renumber.KEEP_DEPRECATED seconds after it left, each old one as deprecated (so open
    connections on an old address survive); dhcpcd's hook's own list counts too."""

    def __init__(self, host: HostConfig) -> None:
        self.host = host
        self.gone: dict[IPv6Network, float] = {}
        self.last: tuple[tuple[IPv6Network, ...], tuple[IPv6Network, ...]] | None = None

    def now(self) -> tuple[tuple[IPv6Network, ...], tuple[IPv6Network, ...]]:
        """(current, deprecated) now; OSError/NetlinkError if mux cannot be read."""
        from . import renumber

        with links.iproute(self.host.mux.netns) as mipr:
            gw = links.link_addrs(mipr, self.host.mux.gateway)
        current = tuple(
            p
            for p in links.advertised_prefixes(gw, self.host.mux.ula.network)
            if not p.subnet_of(links.ULA)
        )
        t = time.time()
        for p in self.last[0] if self.last else ():
            if p not in current:
                self.gone.setdefault(p, t + renumber.KEEP_DEPRECATED)
        for p in [p for p, until in self.gone.items() if until <= t or p in current]:
            del self.gone[p]
        hook = renumber.load(self.host.paths.run_dir).deprecated
        dep = {*self.gone, *(p for p, until in hook.items() if until > t)} - set(current)
        return current, tuple(sorted(dep))


def follow(host: HostConfig, stop: threading.Event, poll: float = 30.0) -> None:
    """Re-address routed workloads whenever the gateway's prefixes change, until `stop`.

    Runs in the mux watcher (`netmux mux up --watch`: root, allowed to enter workload
    namespaces, which dhcpcd's hook is not); ipmuxd does the same for its routed devices."""
    events = nsutil.run_in_netns(
        host.mux.netns, lambda: links.event_socket(links.RTMGRP_IPV6_IFADDR)
    )
    prefixes = Prefixes(host)
    due = 0.0  # the next check without an event (deprecated prefixes expire)
    first = True
    try:
        while not stop.is_set():
            woke = first or bool(select.select([events], [], [], min(poll, 1.0))[0])
            first = False
            if woke:
                links._drain(events)
            elif time.monotonic() < due:
                continue
            due = time.monotonic() + poll
            try:
                now = prefixes.now()
            except (OSError, pr2.NetlinkError) as e:  # mux going down: its watcher stops too
                journal.debug(f"routed workloads: cannot read {host.mux.gateway}: {e}")
                continue
            if now == prefixes.last:
                continue
            try:
                changed = renumber_workloads(host, *now)
            except (NetmuxError, OSError, pr2.NetlinkError) as e:
                journal.warning(f"routed workloads: re-addressing failed: {e}")
                due = time.monotonic() + 1.0  # try again soon
                continue
            prefixes.last = now
            if changed:
                journal.info(f"routed workloads re-addressed: {', '.join(changed)}")
    finally:
        events.close()
