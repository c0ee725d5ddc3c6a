"""`netmux lab up --hosts N`: several netmux hosts side by side behind one lab router.

    host 1 (primary)        host 2 (member)           ...      [vps]      [internet]
    mux: Knot a+b+catalog   mux2: Knot b, phonebookd           knotd  ◀── dig, unbound
         phonebookd, expiry       (hosts sink, lease)          (catalog)
      │ labup0                │ labup0h2                        │ vps0      │
      └──lan0── [router netns: kea, radvd, DNS] ──lan0h2──┘ └──(vps link)──┘

Host 1 is the single-host lab of netmux.lab (its mux, its cable, its prefix delegated by
the router's kea). Each further host I gets a mux of its own (`MUX` + I), a cable of its
own into the same router namespace (`ROUTER_LINK` + hI, its own router LAN
2001:db8:ff:I::/64 with an upstream radvd) and the I-th /64 after lab.prefix, delegated
by the same kea (one more subnet, on that cable) to the host's own dhcpcd, which asks
with IAID I (uplink.pd_iaid); without kea, put on its gw0 statically.

Every host runs its own Knot (in its mux, on [::]:53) and its own phonebookd (publish
socket only, no D-Bus) with a config generated from the lab's (`config_path(base, I)`):
host 1 is the primary of docs/hosts.md, the others members that send their public
records to it on a short lease (`LEASE`), so a host switched off (`netmux lab off I`: its
cable pulled) has its names gone within seconds, and back with its first refresh
(`netmux lab on I`). An expiry loop stands in for netmux-host-expire.timer.

tests/hostsfix.py (the namespaces-only topology of the hosts tests and bench) takes its
veth pairs, dig, waits and the vps and internet addresses from here.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path
from typing import Any

from .. import config, hosts, journal, lab
from ..config import HostConfig
from ..errors import StateError, UsageError
from . import supervise

LEASE = 2.0  # seconds: refreshes every 0.5 s, gone within LEASE + EXPIRE_EVERY (+1 s)
EXPIRE_EVERY = 1.0
MAX_HOSTS = 3
VPS_LINK = (IPv6Interface("2001:db8:5::1/64"), IPv6Interface("2001:db8:5::53/64"))
INET_LINK = (IPv6Interface("2001:db8:6::1/64"), IPv6Interface("2001:db8:6::2/64"))
VPS_NS = "ns.vps.example"
STATE = "lab-hosts"  # under paths.run_dir: the generated configs and each host's files


# --- layout (pure) ------------------------------------------------------------------------


def state_dir(base: HostConfig) -> Path:
    return base.paths.run_dir / STATE


def host_dir(base: HostConfig, i: int) -> Path:
    return state_dir(base) / f"h{i}"


def config_path(base: HostConfig, i: int) -> Path:
    """Host I's netmux.toml: `netmux --config THIS up NAME` starts a workload on host I."""
    return host_dir(base, i) / "netmux.toml"


def hostname(base: HostConfig, i: int) -> str:
    """Host 1 keeps dns.hostname; then the next letters after a one-letter name (a, b, c),
    else NAME2, NAME3."""
    name = base.dns.hostname or "lab"
    if i == 1:
        return name
    if len(name) == 1 and "a" <= name <= "w":
        return chr(ord(name) + i - 1)
    return f"{name[:60]}{i}"


def vps_netns(base: HostConfig) -> str:
    return f"{base.lab.router_netns}-vps"


def inet_netns(base: HostConfig) -> str:
    return f"{base.lab.router_netns}-inet"


def host_prefix(base: HostConfig, i: int) -> IPv6Network:
    return IPv6Network((int(base.lab.prefix.network_address) + ((i - 1) << 64), 64))


def primary_address(first: HostConfig) -> IPv6Address:
    """Host 1's Knot, as the members and the secondary reach it: gw0's global address in
    lab.prefix (dhcpcd's, from the delegation; or the static PREFIX::1)."""
    out = lab.ip("-j", "-6", "addr", "show", "dev", first.mux.gateway, "scope", "global",
                 netns=first.mux.netns)  # fmt: skip
    for rec in json.loads(out or "[]"):
        for a in rec.get("addr_info", []):
            addr = IPv6Address(a["local"])
            if addr in first.lab.prefix:
                return addr
    raise StateError(f"lab: no address in {first.lab.prefix} on {first.mux.netns}/gw0")


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        both = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = _merge(out[k], v) if both else v
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string is a JSON string


def dump_toml(table: Mapping[str, Any]) -> str:
    """Tables of scalars and lists (a netmux.toml): what the generated configs need. Pure."""
    out = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, Mapping)]
    for k, v in table.items():
        if isinstance(v, Mapping):
            out.append(f"\n[{k}]")
            out += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(out).lstrip("\n") + "\n"


def host_table(
    base_table: Mapping[str, Any], base: HostConfig, i: int, primary: IPv6Address | None = None
) -> dict[str, Any]:
    """Host I's config: the lab's own, with its mux, cable, paths and DNS roles. Pure."""
    d = host_dir(base, i)
    over: dict[str, Any] = {
        "dns": {"hostname": hostname(base, i), "domain": base.dns.domain, "ttl": 2},
        "phonebook": {
            "sinks": ["rfc2136"],
            "server": "::1",
            "tsig_key": str(d / "knot" / "phonebook.key"),
            "socket": str(d / "publish"),
            "watch_units": False,
            "group": "root",
        },
    }
    if i == 1:
        over["hosts"] = {
            "role": "primary",
            "directory": str(d / "hosts"),
            "lease": LEASE,
            "secondaries": [str(VPS_LINK[1].ip)],
            "secondary_ns": [VPS_NS],
        }
        return _merge(base_table, over)
    lab_cfg = base.lab
    over["hosts"] = {
        "role": "member",
        "primary": str(primary),
        "key": str(d / "host.key"),
        "lease": LEASE,
    }
    over["mux"] = {
        "netns": f"{base.mux.netns[:13]}{i}",
        "uplinks": [f"{lab_cfg.uplink[:12]}h{i}"],
    }
    over["lab"] = {
        "uplink": f"{lab_cfg.uplink[:12]}h{i}",
        "router_link": f"{lab_cfg.router_link[:12]}h{i}",
        "router_address": f"2001:db8:ff:{i}::1/64",
        "prefix": str(host_prefix(base, i)),
    }
    over["nat64"] = {"enabled": False}
    over["uplink"] = {"pd_iaid": i}  # each host asks for its delegation with its own IAID
    over["paths"] = {
        "state_dir": str(d / "state"),
        "run_dir": str(d / "run"),
        "workloads_dir": str(d / "workloads"),
    }
    table = _merge(base_table, over)
    table["mux"].pop("root_link", None)
    table["mux"].pop("static_addresses", None)
    return table


def write_config(
    base: HostConfig, n: int, i: int, primary: IPv6Address | None = None
) -> HostConfig:
    """Host I's netmux.toml (host 1's too), loaded back: the file is the truth."""
    src = Path(base.source)
    base_table = tomllib.loads(src.read_text()) if src.is_file() else {}
    p = config_path(base, i)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        f"# netmux lab host {i} of {n}: generated by `netmux lab up --hosts {n}` from "
        f"{base.source}\n" + dump_toml(host_table(base_table, base, i, primary))
    )
    return config.load_host(p)


def hosts_in(base: HostConfig) -> list[HostConfig]:
    """The hosts of a running lab (from their configs), host 1 first; [] for a single host."""
    found = []
    for i in range(1, MAX_HOSTS + 1):
        p = config_path(base, i)
        if p.is_file():
            found.append(config.load_host(p))
    return found


# --- small edges --------------------------------------------------------------------------


def run_in(argv: list[str], netns: str | None = None) -> str:
    """Run argv (in `netns`: `ip netns exec`); its stdout, StateError when it fails."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else argv
    r = subprocess.run(full, capture_output=True, text=True)
    if r.returncode != 0:
        raise StateError(f"lab: `{' '.join(full)}` failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def _netmux(cfg: HostConfig, netns: str, *args: str) -> str:
    return run_in([sys.executable, "-m", "netmux.cli", "--config", cfg.source, *args], netns)


def veth(ns1: str, if1: str, a1: IPv6Interface, ns2: str, if2: str, a2: IPv6Interface) -> None:
    """A veth pair between two namespaces, an address (no DAD) on each end, both up."""
    if if1 not in lab.links_in(ns1):
        lab.ip("link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2, netns=ns1)
    for ns, ifname, addr in ((ns1, if1, a1), (ns2, if2, a2)):
        lab.ip("-6", "addr", "replace", str(addr), "dev", ifname, "nodad", netns=ns)
        lab.ip("link", "set", ifname, "up", netns=ns)


def netns_up(name: str) -> None:
    if not lab.netns_exists(name):
        lab.ip("netns", "add", name)
    lab.ip("link", "set", "lo", "up", netns=name)


def answers(netns: str, server: str, name: str, rtype: str = "AAAA", recurse: bool = False) -> str:
    """`dig @server +short` from inside `netns` ("" if none): +norec unless `recurse`
    (asking a resolver rather than an authoritative server)."""
    r = subprocess.run(
        ["ip", "netns", "exec", netns, "dig", f"@{server}", "+rec" if recurse else "+norec",
         "+short", "+time=1", "+tries=1", name, rtype],
        capture_output=True, text=True,
    )  # fmt: skip
    return r.stdout.strip() if r.returncode == 0 else ""


def _serves(netns: str, zone: str) -> bool:
    return bool(answers(netns, "::1", zone, "SOA"))


def wait_until(what: str, fn: Callable[[], bool], timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > timeout:
            raise StateError(f"lab: not within {timeout:g}s: {what}")
        time.sleep(0.1)
    return time.monotonic() - t0


# --- one host's DNS: its Knot, its phonebookd ---------------------------------------------


def knot_dir(cfg: HostConfig) -> Path:
    return Path(cfg.phonebook.tsig_key).parent


def knot_socket(cfg: HostConfig) -> Path:
    return knot_dir(cfg) / "run" / "knot.sock"


def knot_up(cfg: HostConfig, netns: str, run: Path) -> None:
    """The host's Knot (netmux.phonebook.knot's knot.conf; a primary's includes hosts.conf),
    in `netns` on [::]:53, started under supervision in `run` and waited for."""
    from ..phonebook import knot

    rc = knot.main([str(knot_dir(cfg)), "--config", cfg.source, "--listen", "::"])
    if rc != 0:
        raise StateError(f"lab: knot.conf for {cfg.dns.hostname} could not be written")
    supervise.start("knotd", ["knotd", "-c", str(knot_dir(cfg) / "knot.conf")], netns, run)
    zone = cfg.public_zone.lower()
    wait_until(f"{cfg.dns.hostname}'s Knot answers {zone} NS",
               lambda: bool(answers(netns, "::1", zone, "NS")))  # fmt: skip


def phonebook_up(cfg: HostConfig, netns: str, run: Path) -> None:
    """phonebookd with its publish socket only (no D-Bus), in the host's mux: it reaches
    its own Knot at ::1 and, on a member, the primary through the lab router."""
    argv = [sys.executable, "-m", "netmux.phonebook.service", "--config", cfg.source,
            "--no-dbus"]  # fmt: skip
    supervise.start("phonebookd", argv, netns, run)
    wait_until("phonebookd's publish socket", cfg.phonebook.socket.exists, 10.0)


def expiry_up(cfg: HostConfig, netns: str, run: Path) -> None:
    """`netmux host expire` every EXPIRE_EVERY seconds (netmux-host-expire.timer's job)."""
    argv = [sys.executable, "-m", "netmux.lab.multihost", "expire", cfg.source,
            "--every", str(EXPIRE_EVERY)]  # fmt: skip
    supervise.start("host-expire", argv, netns, run)


# --- the DNS world: primary's Knot, the vps secondary, the internet -----------------------


def secondary_up(primary: HostConfig, primary_addr: str, vps: str, sdir: Path, run: Path) -> None:
    """The off-site secondary in namespace `vps`: its knot.conf rendered by netmux.hosts
    (it interprets the primary's catalog), started under supervision in `run`."""
    for sub in ("zones", "db", "run"):
        (sdir / sub).mkdir(parents=True, exist_ok=True)
    key = hosts.secondary_key(primary)
    assert key is not None
    conf = sdir / "knot.conf"
    conf.write_text(
        hosts.render_secondary_conf(sdir, ["::@53"], primary_addr, primary.hosts.catalog, key)
    )
    supervise.start("secondary", ["knotd", "-c", str(conf)], vps, run)


def internet_resolver_up(base: HostConfig, inet: str, run: Path) -> None:
    """unbound in the internet namespace: DOMAIN from the secondary, as a resolver out
    there would find it through the public delegation."""
    d = run / "internet-resolver"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "unbound.conf"
    domain = base.dns.domain
    conf.write_text(
        "server:\n"
        f"  interface: {INET_LINK[1].ip}\n  interface: ::1\n"
        '  do-daemonize: no\n  chroot: ""\n  username: ""\n'
        f'  directory: "{d}"\n  pidfile: ""\n  use-syslog: no\n  logfile: ""\n'
        "  num-threads: 1\n  access-control: ::/0 allow\n  do-ip4: no\n"
        "  cache-max-ttl: 1\n  cache-max-negative-ttl: 1\n"
        f'  local-zone: "{domain}." nodefault\n  domain-insecure: "{domain}."\n'
        "remote-control:\n  control-enable: no\n"
        f'stub-zone:\n  name: "{domain}."\n  stub-addr: {INET_LINK[0].ip}\n'
    )
    supervise.start("internet-resolver", ["unbound", "-d", "-c", str(conf)], inet, run)


# --- up / down / off / on -----------------------------------------------------------------


def kea_config(text: str, cfgs: list[HostConfig], run: Path) -> str:
    """The lab kea's config (netmux.upstream's, for host 1) with one more subnet per further
    host: on that host's cable, its router LAN, a pd-pool of exactly its /64. Pure."""
    from . import upstream

    conf = json.loads(text)
    dh = conf["Dhcp6"]
    names = dh["interfaces-config"]["interfaces"]
    subnets = [s for s in dh["subnet6"] if s["id"] == 1]
    for i, cfg in enumerate(cfgs, 2):
        p = upstream.plan(cfg)
        sub = json.loads(upstream.kea_config(p, run))["Dhcp6"]["subnet6"][0]
        sub["id"] = i
        subnets.append(sub)
        if p.link not in names:
            names.append(p.link)
    dh["subnet6"] = subnets
    return json.dumps(conf, indent=1) + "\n"


def kea_up(first: HostConfig, cfgs: list[HostConfig]) -> None:
    """The router's kea (running for host 1) delegates every further host's /64 too; an
    upstream radvd on each further cable sends the RAs (M/O flags) that start dhcpcd's
    DHCPv6 there.

    kea is restarted, not reloaded: kea >= 2.6 checks a subnet's `interface` against the
    interfaces it detected when it started, so a config-reload naming a cable made since
    fails ("... is not present in the system"); kea 2.2 accepted it. Leases live in memory,
    so host 1's lease is made again at its next renewal (its pool is exactly its /64)."""
    from . import upstream

    run = lab.daemon_dir(first)
    conf = run / "kea-dhcp6.conf"
    text = conf.read_text()
    new = kea_config(text, cfgs, run)
    if new != text:
        conf.write_text(new)
        supervise.stop("kea6", run)
        upstream.run_kea(conf, upstream.plan(first).netns, run)
    for i, cfg in enumerate(cfgs, 2):
        p = upstream.plan(cfg)
        rconf, rpid = run / f"upstream-radvd-h{i}.conf", run / f"upstream-radvd-h{i}.daemon.pid"
        rconf.write_text(upstream.radvd_config(p))
        argv = ["radvd", "--nodaemon", "-m", "stderr", "-C", str(rconf), "-p", str(rpid)]
        supervise.start(f"upstream-radvd-h{i}", argv, p.netns, run, pidfile=rpid)


def member_cable_up(cfg: HostConfig) -> None:
    """A further host's mux and its cable into the lab router (routes both ways)."""
    from .. import mux

    lab.check(cfg)
    mux.up(cfg)
    lab.cable_up(cfg)
    lab.router_routes(cfg)


def member_prefix_up(cfg: HostConfig, pd: bool) -> None:
    """radvd in the host's mux and its /64: with `pd` by DHCPv6-PD from the lab's kea (its
    own dhcpcd, asking with IAID uplink.pd_iaid = I), else static on gw0."""
    from . import uplink, upstream

    if not pd:
        lab.assign_prefix(cfg)
    lab.radvd_up(cfg)
    if pd:
        run = lab.daemon_dir(cfg)
        uplink.start_dhcpcd(cfg, run, [cfg.lab.uplink], run / "radvd.conf",
                            run / "radvd.daemon.pid", Path(cfg.source))  # fmt: skip
        upstream.wait_prefix(cfg, cfg.lab.prefix, timeout=15.0)


def up(base: HostConfig, n: int) -> list[HostConfig]:
    """The whole several-hosts lab (idempotent); returns every host's config, host 1 first."""
    if not 2 <= n <= MAX_HOSTS:
        raise UsageError(f"lab up --hosts {n}: from 2 to {MAX_HOSTS} hosts")
    if shutil.which("knotd") is None or shutil.which("dig") is None:
        raise UsageError("lab up --hosts: needs knotd and dig (Debian: knot, bind9-dnsutils)")
    t0 = time.monotonic()
    first = write_config(base, n, 1)
    lab.up(first)
    run1 = lab.daemon_dir(first)
    addr = primary_address(first)
    cfgs = [first, *(write_config(base, n, i, addr) for i in range(2, n + 1))]
    from . import upstream

    for cfg in cfgs[1:]:
        member_cable_up(cfg)
    pd = upstream.available() and (run1 / "kea-dhcp6.conf").exists()
    if pd:
        kea_up(first, cfgs[1:])
    for cfg in cfgs[1:]:
        member_prefix_up(cfg, pd)
    router, vps, inet = base.lab.router_netns, vps_netns(base), inet_netns(base)
    netns_up(vps)
    netns_up(inet)
    veth(router, "vps0", VPS_LINK[0], vps, "up0", VPS_LINK[1])
    veth(vps, "inet0", INET_LINK[0], inet, "up0", INET_LINK[1])
    lab.ip("-6", "route", "replace", "default", "via", str(VPS_LINK[0].ip), netns=vps)
    lab.ip("-6", "route", "replace", "default", "via", str(INET_LINK[0].ip), netns=inet)
    knot_up(first, first.mux.netns, run1)
    for cfg in cfgs[1:]:
        name = cfg.dns.hostname
        if not (first.hosts.directory / "keys" / f"{name}.key").exists():
            hosts.add_host(first, name, str(addr), knot_socket(first))
    secondary_up(first, str(addr), vps, state_dir(base) / "vps", run1)
    if shutil.which("unbound"):
        internet_resolver_up(base, inet, run1)
    for cfg in cfgs[1:]:
        run = lab.daemon_dir(cfg)
        knot_up(cfg, cfg.mux.netns, run)
        if not cfg.hosts.key.exists():
            join = first.hosts.directory / f"{cfg.dns.hostname}{hosts.JOIN_SUFFIX}"
            _netmux(cfg, cfg.mux.netns, "-q", "host", "join", str(join))
        phonebook_up(cfg, cfg.mux.netns, run)
    phonebook_up(first, first.mux.netns, run1)
    expiry_up(first, first.mux.netns, run1)
    for zone in (c.public_zone.lower() for c in cfgs):
        wait_until(f"{zone} on the secondary", functools.partial(_serves, vps, zone))
    journal.info(
        f"lab is up with {n} hosts in {time.monotonic() - t0:.2f}s: "
        + ", ".join(f"{c.dns.hostname} ({c.mux.netns}, {c.lab.prefix})" for c in cfgs),
        netns=first.mux.netns,
    )
    return cfgs


def _host(base: HostConfig, number: str | None) -> HostConfig:
    cfgs = hosts_in(base)
    try:
        i = int(number or "")
    except ValueError:
        i = 0
    if not cfgs:
        raise StateError("lab: no lab with several hosts runs (`netmux lab up --hosts 2`)")
    if not 2 <= i <= len(cfgs):
        raise UsageError(f"lab off/on: the host's number, 2 to {len(cfgs)} (host 1 is the primary)")
    return cfgs[i - 1]


def switch_off(base: HostConfig, number: str | None) -> HostConfig:
    """Host I switched off: its cable pulled at the router (nothing unpublished, no more
    refreshes reach the primary: its lease lapses and its names go)."""
    cfg = _host(base, number)
    lab.ip("link", "set", cfg.lab.router_link, "down", netns=cfg.lab.router_netns)
    journal.info(f"lab: {cfg.dns.hostname} switched off (cable pulled)", netns=cfg.mux.netns)
    return cfg


def switch_on(base: HostConfig, number: str | None) -> HostConfig:
    """The cable back: addresses and routes again; the host's next refresh (every lease/4)
    reads its zone back and sends its records again."""
    cfg = _host(base, number)
    lab.cable_up(cfg)
    lab.router_routes(cfg)
    journal.info(f"lab: {cfg.dns.hostname} switched on", netns=cfg.mux.netns)
    return cfg


def down(base: HostConfig, force: bool = False) -> list[str]:
    """Remove the further hosts, the vps and the internet (host 1 is left to lab.down).
    Returns what was kept (a host whose workloads are still up, without force)."""
    cfgs = hosts_in(base)
    kept: list[str] = []
    for cfg in reversed(cfgs[1:]):
        lab.stop_daemons(cfg)
        left = lab.unplug(cfg, force, f"`netmux --config {cfg.source} down NAME` them")
        kept += [f"mux {cfg.mux.netns}", *(f"workload {n}" for n in left)] if left else []
    for ns in (inet_netns(base), vps_netns(base)):
        if lab.netns_exists(ns):
            lab.ip("netns", "del", ns, check=False)
    if not kept:
        shutil.rmtree(state_dir(base), ignore_errors=True)
    return kept


def cmd_lab_hosts(args: argparse.Namespace, base: HostConfig) -> int | None:
    """`netmux lab` actions for several hosts; None: lab.cmd_lab does the rest."""
    n = getattr(args, "hosts", 1) or 1
    if args.action == "up" and n > 1:
        lab.check(base)
        try:
            cfgs = up(base, n)
        except BaseException:
            journal.warning("lab up --hosts failed: removing what it built")
            with contextlib.suppress(Exception):
                down(base, force=True)
            with contextlib.suppress(Exception):
                lab.down(base, force=True, keep_logs=True)
            raise
        for i, c in enumerate(cfgs, 1):
            role = "primary" if i == 1 else "member"
            print(f"host {i} {c.dns.hostname} ({role}): netmux --config {c.source}  "
                  f"mux {c.mux.netns}, {c.lab.prefix}, zone {c.public_zone}")  # fmt: skip
        return 0
    if args.action in ("off", "on"):
        cfg = (switch_off if args.action == "off" else switch_on)(base, args.prefix)
        print(f"{cfg.dns.hostname} switched {args.action}")
        return 0
    if args.action == "down":
        first = hosts_in(base)[:1]
        kept = down(base, force=args.force)
        rc = lab.cmd_lab(args, first[0] if first else base)
        return 1 if kept else rc
    return None


# --- `python -m netmux.lab.multihost expire CONFIG`: the lab's expiry timer ---------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netmux.lab.multihost")
    ap.add_argument("what", choices=["expire"])
    ap.add_argument("config", type=Path)
    ap.add_argument("--every", type=float, default=EXPIRE_EVERY)
    a = ap.parse_args(argv)
    cfg = config.load_host(a.config)
    while True:
        try:
            hosts.expire(cfg)
        except Exception as e:  # Knot restarting: say it, try again
            journal.warning(f"lab expiry: {e}")
        time.sleep(a.every)


if __name__ == "__main__":
    sys.exit(main())
