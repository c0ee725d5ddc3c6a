"""The mux namespace: parent link, gateway, forwarding, the root namespace's macvlan, NICs.

`up` is idempotent and safe to repeat at any time (every step checks before it acts);
`down` likewise. The order inside `up` is the one docs/platform.md says matters:
forwarding is switched on inside mux (all + default) before any uplink arrives (else the
kernel autoconfigures SLAAC on the uplink, and a non-forwarding gw0 sends radvd's unicast
RAs to stale MACs — the "almost a minute" delay); gw0 gets a short neighbour timer.

NIC adoption (`watch_nics`): enumerate net devices with pyudev once, then follow kernel
uevents (udevd need not run; uevents are per namespace, so this sees the root namespace's
hot-plugged NICs and the `remove` when one moves away). Every NIC matching the uplink
patterns is moved into mux. A NIC that vanishes meanwhile or a name that matches nothing
is logged and skipped: adoption never fails the service.
"""

from __future__ import annotations

import argparse
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import config, denylist, ifaddr, journal, links, names, nsutil, pr2, state
from .config import HostConfig
from .errors import NetmuxError, StateError, UsageError
from .rtnl import NetlinkError

SELF_NETNS = "/proc/self/ns/net"


# --- derived identities -----------------------------------------------------------------


def derived_mac(key: bytes, purpose: str) -> str:
    """A stable, locally administered unicast MAC for mux's own links (gw0, root link)."""
    return names.as_mac(names.derive(key, "mux/" + purpose))


def derived_secret(key: bytes, purpose: str) -> str:
    return names.as_secret(names.derive(key, "mux/secret/" + purpose))


def peer_name(parent: str) -> str:
    """The other end of a veth parent: 'host0' -> 'host0p' (≤ 15 characters)."""
    return parent[:14] + "p"


# --- state queries ----------------------------------------------------------------------


def exists(host: HostConfig) -> bool:
    return links.netns_exists(host.mux.netns)


def require(host: HostConfig) -> None:
    """StateError unless mux's namespace exists (what a workload needs first; a missing
    parent link is reported when the workload's link is created on it)."""
    ns = host.mux.netns
    if not links.netns_exists(ns):
        raise StateError(
            f"mux namespace {ns!r} does not exist: run `netmux mux up` "
            "(or start netmux-mux.service) first"
        )


# --- up / down --------------------------------------------------------------------------


def _ensure_parent(ipr: Any, cfg: config.MuxConfig) -> str:
    """host0: dummy where the kernel has it, else veth (both ends up), else a bridge."""
    info = links.link_info(ipr, cfg.parent)
    if info is not None:
        if info["kind"] == "veth":
            _up_if_present(ipr, peer_name(cfg.parent))
        links.set_up(ipr, cfg.parent)
        return str(info["kind"])
    kinds = ["dummy", "veth", "bridge"] if cfg.parent_kind == "auto" else [cfg.parent_kind]
    last: Exception | None = None
    for kind in kinds:
        kw: dict[str, Any] = {"ifname": cfg.parent, "kind": kind}
        if kind == "veth":
            kw["peer"] = peer_name(cfg.parent)
        try:
            ipr.link("add", **kw)
        except pr2.NetlinkError as e:
            last = e
            if e.code in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOENT):
                journal.debug(f"mux: parent kind {kind} not available here: {e.args[1]}")
                continue
            raise StateError(f"cannot create {kind} {cfg.parent} in mux: {e.args[1]}") from e
        if kind == "veth":
            _up_if_present(ipr, peer_name(cfg.parent))
        links.set_up(ipr, cfg.parent)
        return kind
    raise StateError(
        f"cannot create parent link {cfg.parent}: none of {', '.join(kinds)} is available "
        f"in this kernel ({last})"
    )


def _up_if_present(ipr: Any, ifname: str) -> None:
    if links.link_index(ipr, ifname) is not None:
        links.set_up(ipr, ifname)


def up(host: HostConfig, link_local_timeout: float = 3.0) -> None:
    """Create or complete mux (idempotent). Returns when gw0 can send router adverts."""
    cfg = host.mux
    ns = cfg.netns
    created = False
    if not links.netns_exists(ns):
        try:
            os.close(links.create_marked_netns(ns, MUX_MARK))
            created = True
            journal.info(f"mux: created network namespace {ns}", netns=ns)
        except StateError:
            pass  # a concurrent `mux up` won
    if not created:
        require_ours(host)
    try:
        _build(host, link_local_timeout)
    except BaseException:
        if created:  # nothing half-built: a mux this call started is removed again
            down(host)
        raise


# mux's namespace carries this mark (links.set_mark) from before it has a name.
MUX_MARK = links.MARK_PREFIX + "mux"


def require_ours(host: HostConfig) -> None:
    """StateError unless the existing mux namespace is netmux's: marked, or made before
    marks existed (its gateway has netmux's derived MAC; then it is marked now)."""
    ns = host.mux.netns
    if links.read_mark(ns) == MUX_MARK:
        return
    try:
        key = names.load_host_key(host.paths.host_key, create=False)
        with links.iproute(ns) as ipr:
            info = links.link_info(ipr, host.mux.gateway)
    except (OSError, NetmuxError, NetlinkError):
        info, key = None, b""
    if info is not None and key and info["mac"] == derived_mac(key, "gateway"):
        nsutil.run_in_netns(ns, lambda: links.set_mark(MUX_MARK))
        return
    raise StateError(
        f"network namespace {nsutil.netns_path(ns)} exists and was not made by netmux: "
        f"not touching it (remove it, or choose another [mux] netns)"
    )


def _stopping_marker(host: HostConfig) -> Path:
    """Present while `mux down` runs: adoption stands still, so the NICs `down` hands back
    to the root namespace are not taken straight back by a watcher still running (systemd
    runs ExecStop= before it signals the main process)."""
    return host.paths.run_dir / "mux-stopping"


def _build(host: HostConfig, link_local_timeout: float) -> None:
    cfg = host.mux
    ns = cfg.netns
    _stopping_marker(host).unlink(missing_ok=True)
    # Forwarding first: before any uplink can arrive (docs/platform.md, "Router advertisements").
    links.sysctl_write(
        ns,
        [
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.forwarding", "1"),
        ],
    )
    # Guard table: denylist and flood defence, before any uplink arrives.
    denylist.guard_at_mux_up(host)
    key = names.load_host_key(host.paths.host_key)
    with links.iproute(ns) as ipr:
        links.set_up(ipr, "lo")
        kind = _ensure_parent(ipr, cfg)
        if links.link_index(ipr, cfg.gateway) is None:
            links.create_child_link(ipr, cfg.parent, cfg.gateway, derived_mac(key, "gateway"))
        gw = cfg.gateway
        links.sysctl_write(
            ns,
            [
                (f"net.ipv6.conf.{gw}.forwarding", "1"),
                (f"net.ipv6.neigh.{gw}.retrans_time_ms", str(host.workload.retrans_time_ms)),
                (f"net.ipv6.conf.{gw}.ndisc_notify", "1"),
                (f"net.ipv6.conf.{gw}.router_solicitation_delay", "0"),
            ],
        )
        links.add_addresses(ipr, gw, (cfg.ula, *cfg.static_addresses), nodad=True)
        links.set_up(ipr, gw)
        _wait_link_local(ipr, gw, link_local_timeout)
    if cfg.root_link:
        _ensure_root_link(host, key)
    journal.info(f"mux {ns} is up (parent {cfg.parent}: {kind}, gateway {gw})", netns=ns)


def _wait_link_local(ipr: Any, ifname: str, timeout: float) -> None:
    """radvd cannot send from a tentative link-local address: wait for DAD (~0.1 s)."""
    deadline = time.monotonic() + timeout
    while True:
        st = links.link_state(ipr, ifname)
        if any(a.usable() and not a.flags & ifaddr.IFA_F_TENTATIVE for a in st.link_local):
            return
        if time.monotonic() > deadline:
            journal.warning(f"mux: {ifname} has no link-local address after {timeout:g}s")
            return
        time.sleep(0.02)


def _ensure_root_link(host: HostConfig, key: bytes) -> None:
    """A macvlan on host0 for the root namespace (the host's own services)."""
    cfg = host.mux
    name = cfg.root_link
    with links.iproute(None) as root:
        info = links.link_info(root, name)
        if info is not None and info["kind"] != "macvlan":
            raise StateError(
                f"{host.source}: mux.root_link: {name!r} exists in the root namespace "
                f"and is a {info['kind']}, not a netmux macvlan"
            )
        if info is None:
            with links.iproute(cfg.netns) as ipr:
                links.create_child_link(
                    ipr, cfg.parent, name, derived_mac(key, "root"), target_netns=SELF_NETNS
                )
            links.sysctl_write(
                None,
                links.workload_sysctls(
                    name,
                    derived_secret(key, "root"),
                    host.workload.optimistic_dad,
                    host.workload.retrans_time_ms,
                ),
            )
        links.set_up(root, name)


def workloads(host: HostConfig) -> list[str]:
    """Workloads that exist (a record and a namespace): each hangs off mux's parent link.
    A record whose namespace is gone (a crash) strands nothing and does not count."""
    return [n for n in state.known(host) if os.path.lexists(nsutil.netns_path(n))]


def down(host: HostConfig) -> bool:
    """Remove mux (idempotent): root link, uplinks back home, gateway, parent, netns.

    While workloads exist it refuses (they would be left without a link); muxctl.down
    takes them and the lab's daemons in mux down first. Links are deleted synchronously
    before the namespace (whose teardown is asynchronous and waits for any process still
    inside it, such as a daemon not yet stopped).
    Returns True if there was something to remove.
    """
    cfg = host.mux
    if links.netns_exists(cfg.netns):
        require_ours(host)  # before anything changes
    wls = workloads(host)
    if wls:
        raise StateError(
            f"mux {cfg.netns}: workloads still use it: {', '.join(wls)}; "
            f"`netmux down NAME` them first, or `netmux mux down --force`"
        )
    did = False
    if cfg.root_link:
        with links.iproute(None) as root:
            info = links.link_info(root, cfg.root_link)
            if info is not None and info["kind"] == "macvlan":
                did |= links.delete_link(root, cfg.root_link)
    if not links.netns_exists(cfg.netns):
        return did
    marker = _stopping_marker(host)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    with links.iproute(cfg.netns) as ipr:
        for msg in ipr.get_links():
            ifname = msg.get_attr("IFLA_IFNAME")
            if config.uplink_matches(cfg, ifname):
                _move(ipr, ifname, SELF_NETNS, "released")
        links.delete_link(ipr, cfg.gateway)
        links.delete_link(ipr, cfg.parent)
        links.delete_link(ipr, peer_name(cfg.parent))
    links.remove_netns(cfg.netns)
    marker.unlink(missing_ok=True)  # no mux now: adoption skips for that reason instead
    journal.info(f"mux {cfg.netns} removed", netns=cfg.netns)
    return True


# --- NIC adoption ------------------------------------------------------------------------


def _move(ipr: Any, ifname: str, target: str, verb: str) -> bool:
    """Move `ifname` from ipr's namespace to `target`; log and skip on a vanished link."""
    idx = links.link_index(ipr, ifname)
    if idx is None:
        journal.warning(f"NIC {ifname} vanished before it could be {verb}: skipped", ifname=ifname)
        return False
    fd = nsutil.open_netns(target)
    try:
        ipr.link("set", index=idx, net_ns_fd=fd)
    except pr2.NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            journal.warning(f"NIC {ifname} vanished while being {verb}: skipped", ifname=ifname)
        else:
            journal.warning(f"NIC {ifname} could not be {verb}: {e.args[1]}", ifname=ifname)
        return False
    finally:
        os.close(fd)
    return True


def adopt(host: HostConfig, ifname: str) -> bool:
    """Move NIC `ifname` from this namespace into mux and bring it up. Never raises for a
    NIC that is not an uplink, has vanished, or cannot move: logs and returns False."""
    cfg = host.mux
    if not config.uplink_matches(cfg, ifname):
        journal.info(
            f"NIC {ifname} matches no uplink pattern ({', '.join(cfg.uplinks)}): skipped",
            ifname=ifname,
        )
        return False
    if not links.netns_exists(cfg.netns):
        journal.warning(f"NIC {ifname}: mux {cfg.netns} does not exist: skipped", ifname=ifname)
        return False
    if _stopping_marker(host).exists():
        journal.info(f"NIC {ifname}: mux {cfg.netns} is being removed: skipped", ifname=ifname)
        return False
    with links.iproute(None) as root:
        info = links.link_info(root, ifname)
        if info is None:
            with links.iproute(cfg.netns) as ipr:
                there = links.link_index(ipr, ifname) is not None
            if there:  # the udev rule and the watcher both saw it: one of them was first
                journal.info(f"NIC {ifname} is already in mux {cfg.netns}", ifname=ifname)
            else:
                journal.warning(f"NIC {ifname} vanished before adoption: skipped", ifname=ifname)
            return False
        if info["kind"] in ("macvlan", "macvtap"):
            journal.info(f"NIC {ifname} is a {info['kind']}, not an uplink: skipped")
            return False
        if not _move(root, ifname, str(nsutil.netns_path(cfg.netns)), "adopted"):
            return False
    with links.iproute(cfg.netns) as ipr:
        try:
            links.set_up(ipr, ifname)
        except (StateError, NetlinkError) as e:
            journal.warning(f"NIC {ifname} moved into mux but not up: {e}", ifname=ifname)
    journal.info(
        f"NIC {ifname} adopted into mux {cfg.netns}",
        message_id=journal.NIC_ADOPTED,
        ifname=ifname,
        netns=cfg.netns,
    )
    return True


def watch_nics(
    host: HostConfig,
    stop: threading.Event,
    on_ready: Callable[[], None] | None = None,
    poll: float = 0.25,
    on_handled: Callable[[str, str], None] | None = None,
) -> int:
    """Adopt every matching NIC now and each one hot-plugged later, until `stop` is set.

    The uevent monitor is started before the enumeration, so a NIC appearing in between is
    not missed (at worst seen twice; the second adopt finds it gone and skips).
    `on_handled(action, ifname)` is called once each net uevent has been acted on (what a
    test waits for before it checks that nothing was done). Returns the number of NICs
    adopted.
    """
    import pyudev

    ctx = pyudev.Context()
    mon = pyudev.Monitor.from_netlink(ctx, source="kernel")
    mon.filter_by("net")
    mon.start()
    adopted = 0
    for dev in ctx.list_devices(subsystem="net"):
        if config.uplink_matches(host.mux, dev.sys_name):
            adopted += adopt(host, dev.sys_name)
    if on_ready:
        on_ready()
    while not stop.is_set():
        dev = mon.poll(timeout=poll)
        # "move": a rename (udev naming the NIC after the kernel did) can bring a match
        if dev is None or dev.subsystem != "net" or dev.action not in ("add", "move"):
            continue
        if config.uplink_matches(host.mux, dev.sys_name):
            adopted += adopt(host, dev.sys_name)
        if on_handled:
            on_handled(dev.action, dev.sys_name)
    return adopted


# --- CLI handlers -----------------------------------------------------------------------


def cmd_nic(args: argparse.Namespace, host: HostConfig) -> int:
    if not config.IFNAME_RE.fullmatch(args.ifname):
        raise UsageError(f"interface name {args.ifname!r} is not allowed: {config.IFNAME_ALLOWED}")
    adopt(host, args.ifname)
    return 0  # skipped NICs are logged, never an error (the udev rule must not fail)
