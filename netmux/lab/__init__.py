"""`netmux lab up|down`: a stand-in for a home router, so netmux runs on any Linux box.

The lab package: this module (the router, the cable, `cmd_lab`), the ISP behind the router
(lab/upstream.py), mux's uplink side without systemd (lab/uplink.py) and the supervisor of
the daemons they start (lab/supervise.py). Nothing outside the lab, tests and benches
imports it but `netmux mux` (muxctl.py: the lab's daemons in mux stop with mux).

    router netns (lab.router_netns)            mux netns (mux.netns)
    lan0  fe80::1, 2001:db8::1/64   <-veth->   labup0  fe80::2   (adopted like a real NIC)
          route PREFIX via fe80::2                     default via fe80::1
                                               gw0  PREFIX::1/64 + ULA, forwarding,
                                                    radvd (supervised) advertises both

The uplink end of the veth pair is created in the root namespace under a NIC-like name
(it must match mux.uplinks) and moved into mux by the same code that adopts real NICs
(`mux.adopt`, i.e. `netmux nic adopt`), so the lab exercises that path. Both ends of the
pair get fixed link-local addresses without DAD (a two-ended veth cannot hold a duplicate),
so routes work at once. Where kea is installed, netmux.lab.upstream adds the rest of a home
router (kea-dhcp6 delegating lab.prefix to dhcpcd in mux, RAs, IPv4 by DHCP, an IPv4-only
web server, DNS, NAT64); otherwise `assign_prefix` puts lab.prefix on gw0 statically.
The upstream side is built by small functions (`router_up`, `cable_up`, `router_routes`)
that netmux.lab.upstream extends.

Daemons the lab starts are supervised (netmux.lab.supervise) in `daemon_dir(host)`; `lab down`
stops every daemon recorded there, whoever started it.

Safety: the lab refuses to run when mux.uplinks would match any other link of the root
namespace (such as the host's eth0), and it only ever deletes a link that carries its own
alias. `make demo` and the tests use configs whose names are their own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import time
from ipaddress import IPv6Interface, IPv6Network
from pathlib import Path
from typing import Any

from .. import config, journal, nsutil
from ..config import HostConfig
from ..errors import NetmuxError, StateError, UsageError
from ..render import radvd as radvd_render
from . import supervise
from .upstream import MUX_LL

ALIAS = "netmux-lab uplink"  # marks the veth the lab made (ifalias survives netns moves)
ROUTER_LL = IPv6Interface("fe80::1/64")


# --- small `ip` helpers -------------------------------------------------------------------


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Run `ip [-n NETNS] ARGS`; StateError with ip's message when it fails and check."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise StateError(f"lab: `{' '.join(argv)}` failed: {r.stderr.strip()}")
    return r.stdout


def links_in(netns: str | None) -> dict[str, dict[str, Any]]:
    """ifname -> `ip -j -d link` record for every link in `netns` (None: root namespace)."""
    if netns and not netns_exists(netns):
        return {}
    out = ip("-j", "-d", "link", "show", netns=netns, check=False)
    try:
        return {rec["ifname"]: rec for rec in json.loads(out or "[]")}
    except ValueError:
        return {}


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def _ours(rec: dict[str, Any] | None) -> bool:
    return bool(rec) and rec.get("ifalias") == ALIAS  # type: ignore[union-attr]


# --- checks -----------------------------------------------------------------------------


DEMO_CONFIGS = (
    Path("/usr/share/doc/netmux/examples/demo.toml"),  # the .deb
    Path(__file__).resolve().parents[2] / "docs" / "examples" / "demo.toml",  # a checkout
)


def own_config_hint() -> str:
    """What to pass instead: a config of the lab's own (its own mux, its own paths)."""
    demo = next((p for p in DEMO_CONFIGS if p.exists()), DEMO_CONFIGS[0])
    return (
        f"run the lab with a config of its own: netmux --config {demo} lab up "
        "(and the same --config for up, status and lab down)"
    )


def check(host: HostConfig) -> None:
    """UsageError unless this config can run a lab without touching the host's own links."""
    lab, mux = host.lab, host.mux
    src = host.source
    if not config.uplink_matches(mux, lab.uplink):
        raise UsageError(
            f"{src}: lab.uplink {lab.uplink!r} does not match mux.uplinks "
            f"({', '.join(mux.uplinks)}), so the lab cannot use this host's mux; "
            + own_config_hint()
        )
    if lab.router_netns == mux.netns:
        raise UsageError(f"{src}: lab.router_netns must differ from mux.netns ({mux.netns!r})")
    if lab.router_address.network.overlaps(lab.prefix) or lab.prefix.overlaps(mux.ula.network):
        raise UsageError(
            f"{src}: lab.prefix {lab.prefix} must not overlap lab.router_address "
            f"({lab.router_address}) or mux.ula ({mux.ula})"
        )
    root = links_in(None)
    for name, rec in root.items():
        if name == lab.uplink and _ours(rec):
            continue
        if config.uplink_matches(mux, name):
            raise UsageError(
                f"{src}: mux.uplinks ({', '.join(mux.uplinks)}) match {name!r} in the root "
                "namespace, which the lab would move into mux; " + own_config_hint()
            )
    if lab.uplink in root and not _ours(root[lab.uplink]):
        raise UsageError(f"{src}: lab.uplink {lab.uplink!r} exists and is not the lab's")


# --- the upstream router ------------------------------------------------------------------


def router_up(host: HostConfig) -> None:
    """The router namespace: loopback up and forwarding on (it routes for mux)."""
    ns = host.lab.router_netns
    if not netns_exists(ns):
        ip("netns", "add", ns)
        journal.info(f"lab: created router namespace {ns}", netns=ns)
    ip("link", "set", "lo", "up", netns=ns)
    nsutil.write_sysctls(ns, [("net.ipv6.conf.all.forwarding", "1")])


def cable_up(host: HostConfig) -> None:
    """The veth pair between router and mux; its uplink end adopted into mux like a NIC."""
    from .. import mux

    lab, ns = host.lab, host.lab.router_netns
    in_mux = links_in(host.mux.netns).get(lab.uplink)
    in_root = links_in(None).get(lab.uplink)
    peer_ok = lab.router_link in links_in(ns)
    if (in_mux or in_root) and not peer_ok:  # half of an old cable: start over
        cable_down(host)
        in_mux = in_root = None
    if not in_mux and not in_root:
        # Made under a name no uplink pattern matches, marked, then renamed: a NIC watcher
        # (netmux-mux.service) sees the uplink name only once the alias says it is ours.
        tmp = "t" + lab.uplink[:14]
        if config.uplink_matches(host.mux, tmp):
            tmp = lab.uplink
        ip("link", "add", tmp, "type", "veth", "peer", "name", lab.router_link,
           "netns", ns)  # fmt: skip
        ip("link", "set", tmp, "alias", ALIAS)
        if tmp != lab.uplink:
            ip("link", "set", tmp, "name", lab.uplink)
        in_root = links_in(None).get(lab.uplink)
    if in_root:
        if not _ours(in_root):
            raise StateError(f"lab: {lab.uplink} in the root namespace is not the lab's veth")
        # a NIC watcher (netmux-mux.service) may have adopted it already: fine too
        if not mux.adopt(host, lab.uplink) and lab.uplink not in links_in(host.mux.netns):
            raise StateError(f"lab: {lab.uplink} could not be adopted into {host.mux.netns}")
    ip("link", "set", lab.uplink, "up", netns=host.mux.netns)
    ip("link", "set", lab.router_link, "up", netns=ns)
    _addr(ns, lab.router_link, ROUTER_LL)
    _addr(ns, lab.router_link, lab.router_address)
    _addr(host.mux.netns, lab.uplink, MUX_LL)


def _addr(netns: str, dev: str, addr: IPv6Interface) -> None:
    ip("-6", "addr", "replace", str(addr), "dev", dev, "nodad", netns=netns)


def router_routes(host: HostConfig) -> None:
    """Routes both ways: the router reaches the prefix via mux, mux defaults to the router."""
    lab = host.lab
    ip("-6", "route", "replace", str(lab.prefix), "via", str(MUX_LL.ip), "dev",
       lab.router_link, netns=lab.router_netns)  # fmt: skip
    ip("-6", "route", "replace", "default", "via", str(ROUTER_LL.ip), "dev", lab.uplink,
       netns=host.mux.netns)  # fmt: skip


def gateway_address(host: HostConfig) -> IPv6Interface:
    return IPv6Interface(f"{host.lab.prefix.network_address + 1}/{host.lab.prefix.prefixlen}")


def assign_prefix(host: HostConfig) -> None:
    """The lab's /64 on gw0, static (DHCPv6-PD from the router replaces this later)."""
    _addr(host.mux.netns, host.mux.gateway, gateway_address(host))


# --- radvd ------------------------------------------------------------------------------


def daemon_dir(host: HostConfig) -> Path:
    """Where the lab's supervised daemons keep pidfiles, configs and logs."""
    return host.paths.run_dir / "lab"


def processes_in(netns: str, comm: str) -> list[int]:
    """PIDs of processes named `comm` whose network namespace is `netns` (looked at only,
    never signalled: a process is stopped by the PID its starter recorded)."""
    found = []
    for pid in nsutil.pids_in_netns(netns):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                found.append(pid)
    return found


def radvd_up(host: HostConfig) -> supervise.Daemon | None:
    """radvd in mux with the rendered config; restarted when the config changed.

    When another radvd already serves mux (netmux-radvd.service: systemd is in charge),
    the lab leaves it alone and returns None.
    """
    run = daemon_dir(host)
    ours = supervise.status("radvd", run)
    others = [p for p in processes_in(host.mux.netns, "radvd") if not ours or p != ours.pid]
    if others and not ours:
        journal.info(
            f"lab: radvd already runs in {host.mux.netns} (pid {others[0]}): left in charge",
            netns=host.mux.netns,
        )
        return None
    run.mkdir(parents=True, exist_ok=True)
    conf = run / "radvd.conf"
    from .. import daemons, renumber

    text = radvd_render.render(
        host,
        daemons.radvd(),
        renumber.deprecated_prefixes(run),
        renumber.gateway_leases(host.mux.gateway, host.mux.netns),
    )
    if not conf.exists() or conf.read_text() != text:
        supervise.stop("radvd", run)
        conf.write_text(text)
    pidfile = run / "radvd.daemon.pid"
    argv = ["radvd", "--nodaemon", "-m", "stderr", "-C", str(conf), "-p", str(pidfile)]
    return supervise.start("radvd", argv, host.mux.netns, run, pidfile=pidfile)


def stop_daemons(host: HostConfig) -> None:
    """Stop every daemon recorded in the lab's directory (newest first)."""
    from . import uplink

    run = daemon_dir(host)
    uplink.stop_dhcpcd(run)  # with its privsep helpers (they share its session)
    records = sorted(run.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for rec in records:
        supervise.stop(rec.stem, run)


# --- up / down ----------------------------------------------------------------------------


def up(host: HostConfig) -> None:
    """Build (or complete) the whole lab. Idempotent."""
    from .. import mux

    check(host)
    t0 = time.monotonic()
    if not (netns_exists(host.mux.netns) and netns_exists(host.lab.router_netns)):
        stop_daemons(host)  # left from a lab whose namespaces are gone: all stale
    mux.up(host)
    router_up(host)
    cable_up(host)
    router_routes(host)
    from . import upstream

    pd = upstream.available()
    if not pd:
        assign_prefix(host)  # before radvd: it advertises the prefixes gw0 has when started
    radvd_up(host)
    if pd:  # DHCPv6-PD onto gw0, IPv4 by DHCP, NAT64 (netmux.lab.upstream)
        upstream.lab_up(host, daemon_dir(host))
    journal.info(
        f"lab is up in {time.monotonic() - t0:.2f}s: router {host.lab.router_netns} "
        f"({host.lab.router_address.ip}), prefix {host.lab.prefix} on "
        f"{host.mux.netns}/{host.mux.gateway}",
        netns=host.mux.netns,
        prefix=str(host.lab.prefix),
    )


def cable_down(host: HostConfig) -> None:
    """Delete the lab's veth pair, wherever its uplink end is (only if it is the lab's)."""
    lab = host.lab
    for netns in (host.mux.netns, None):
        rec = links_in(netns).get(lab.uplink)
        if rec is not None and _ours(rec):
            ip("link", "del", lab.uplink, netns=netns, check=False)
    if netns_exists(lab.router_netns):
        ip("link", "del", lab.router_link, netns=lab.router_netns, check=False)


def router_down(host: HostConfig) -> None:
    ns = host.lab.router_netns
    if netns_exists(ns):
        ip("netns", "del", ns, check=False)


def stop_daemons_in_mux(host: HostConfig) -> None:
    """The lab's daemons and helpers (radvd, dhcpcd, tayga, the resolver): they go with mux.
    Nothing to do on a host without a lab."""
    from . import upstream

    if daemon_dir(host).is_dir():
        try:
            upstream.lab_down(host, daemon_dir(host))
        except NetmuxError as e:  # e.g. the resolver's `down` left something: say it, go on
            journal.warning(f"lab down: {e}", netns=host.mux.netns)
        stop_daemons(host)


def unplug(host: HostConfig, force: bool, hint: str) -> list[str]:
    """Pull a lab host's cable and remove its mux — unless workloads of the user's still
    need it and not `force` (then they are named, with `hint`, and returned)."""
    from .. import mux, workload

    cable_down(host)
    left = mux.workloads(host)
    if left and not force:
        journal.warning(
            f"lab down: left mux {host.mux.netns} up for workloads {', '.join(left)}: "
            f"{hint} (or `lab down --force`)",
            netns=host.mux.netns,
        )
        return left
    if force:
        workload.down_all(host)
    mux.down(host)
    return []


def down(host: HostConfig, force: bool = False, keep_logs: bool = False) -> list[str]:
    """Remove everything `up` made: daemons, cable, mux, router. Idempotent.

    Workloads of the user's keep mux (and so their links) unless `force` takes them down
    too; what is left is logged and returned. keep_logs leaves the daemons' logs in the
    lab's directory (a failed `up` points there).
    """
    stop_daemons_in_mux(host)
    left = unplug(host, force, "`netmux down NAME` them, then `netmux lab down` again")
    router_down(host)
    run = daemon_dir(host)
    if run.is_dir():
        for f in run.iterdir():
            if keep_logs and f.suffix == ".log":
                continue
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    f.unlink()
        with contextlib.suppress(OSError):
            run.rmdir()
    if not left:
        journal.info("lab is down", netns=host.mux.netns)
    return [f"mux {host.mux.netns}", *(f"workload {n}" for n in left)] if left else []


def cmd_lab(args: argparse.Namespace, host: HostConfig) -> int:
    if args.action == "up":
        check(host)  # before anything changes
        try:
            up(host)
        except BaseException:
            journal.warning(
                f"lab up failed: removing what it built (daemon logs stay in {daemon_dir(host)})"
            )
            with contextlib.suppress(Exception):
                down(host, keep_logs=True)
            raise
        return 0
    if args.action == "renumber":
        from . import upstream

        new = None
        if args.prefix:
            try:
                new = IPv6Network(args.prefix)
            except ValueError:
                raise UsageError(
                    f"lab renumber: {args.prefix!r} is not allowed; a /64 with host bits clear, "
                    "such as 2001:db8:0:2::/64"
                ) from None
        p = upstream.flash_renumber(host, daemon_dir(host), new)
        t = upstream.wait_prefix(host, p.delegated, timeout=3 * upstream.RENEW + 5)
        print(f"{p.delegated} on {host.mux.netns}/{host.mux.gateway} after {t:.2f}s")
        return 0
    return 1 if down(host, force=args.force) else 0
