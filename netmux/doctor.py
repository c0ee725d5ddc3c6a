"""`netmux doctor`: look at the host and say what is wrong and how to fix it.

Two halves. `gather` runs narrow probes and records what it saw in a `Facts` value:
which link kinds the kernel can create (tried in a throwaway network namespace), the mux
namespace and its links, forwarding, the gateway's addresses, a router solicitation sent
from a throwaway namespace on the mux parent (the RA that comes back), the daemons whose
network namespace is mux's, DNS answers from the resolver (dig, run inside mux), and the
age of dhcpcd's DHCPv6-PD lease. `evaluate` is pure: Facts + config -> checks, each ok,
info, warn, fail or skip, with a fix for every failure. Exit status 0 means no check
failed (warnings are worth knowing, not failures).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import config, nat64, nsutil
from .config import HostConfig
from .ifaddr import IFA_F_TENTATIVE

Status = Literal["ok", "info", "warn", "fail", "skip"]
KINDS = ("macvlan", "macvtap", "veth", "dummy", "bridge", "ipvlan")
MUX_DAEMONS = ("radvd", "dhcpcd", "tayga")
ULA = ipaddress.IPv6Network("fc00::/7")


@dataclass(frozen=True)
class Check:
    id: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class LinkFact:
    kind: str | None
    up: bool


@dataclass(frozen=True)
class RaFact:
    """What one router advertisement said (parse_ra)."""

    router: str
    lifetime: int
    prefixes: tuple[str, ...] = ()
    rdnss: tuple[str, ...] = ()
    pref64: str | None = None


@dataclass(frozen=True)
class LeaseFact:
    """dhcpcd's DHCPv6 lease (parse_lease6) and how old the file is."""

    path: str
    age: float
    t1: int
    t2: int
    prefixes: tuple[tuple[str, int, int], ...]  # (prefix, preferred, valid)


@dataclass(frozen=True)
class HostsFact:
    """A member: its key, and its lease as the primary holds it. A primary: its Knot part."""

    key: bool = True  # member: hosts.key exists; primary: hosts.conf exists
    lease_age: float | None = None  # member: seconds since its last refresh at the primary
    error: str = ""  # member: the primary did not answer


@dataclass(frozen=True)
class Facts:
    """Everything the probes saw. None means "could not be looked at" (with `why`)."""

    root: bool = True
    kinds: dict[str, bool] | None = None
    kinds_error: str = ""
    mux_exists: bool = False
    parent: LinkFact | None = None
    gateway: LinkFact | None = None
    uplinks: tuple[str, ...] = ()
    forwarding: str | None = None
    gateway_addresses: tuple[str, ...] = ()
    ra: RaFact | None = None
    ra_error: str = ""
    daemons: dict[str, tuple[int, ...]] = field(default_factory=dict)
    phonebookd: tuple[int, ...] = ()
    dns: dict[str, str] = field(default_factory=dict)  # zone -> rcode or error
    dig: bool = True
    leases: tuple[LeaseFact, ...] = ()
    tinydns_data: bool = True  # the program the tinydns sink runs exists
    neigh_gc_thresh3: int | None = None  # the IPv6 neighbour table's hard limit (all netns)
    workloads: int = 0  # named namespaces netmux knows as workloads
    host_key: bool = True  # the host key file exists
    other_key: tuple[str, ...] = ()  # workloads whose state was made with another host key
    nat64: nat64.EngineFacts | None = None  # what the host offers NAT64 (None: not probed)
    jool_instance: bool | None = None  # netmux's Jool instance exists in mux (None: not asked)
    hosts: HostsFact | None = None  # several hosts ([hosts] role): netmux/hosts.py


# --- pure parsers ------------------------------------------------------------------------

PLC_LENGTHS = (96, 64, 56, 48, 40, 32)


def parse_ra(data: bytes, router: str) -> RaFact | None:
    """An ICMPv6 router advertisement (RFC 4861, 8106 RDNSS, 8781 PREF64); None if not one."""
    if len(data) < 16 or data[0] != 134:
        return None
    lifetime = struct.unpack_from("!H", data, 6)[0]
    prefixes: list[str] = []
    rdnss: list[str] = []
    pref64: str | None = None
    off = 16
    while off + 2 <= len(data):
        otype, olen = data[off], data[off + 1] * 8
        if olen == 0 or off + olen > len(data):
            break
        opt = data[off : off + olen]
        if otype == 3 and olen >= 32:
            plen = opt[2]
            net = ipaddress.IPv6Network((bytes(opt[16:32]), plen), strict=False)
            prefixes.append(str(net))
        elif otype == 25 and olen >= 24:
            for a in range(8, olen - 15, 16):
                rdnss.append(str(ipaddress.IPv6Address(bytes(opt[a : a + 16]))))
        elif otype == 38 and olen >= 16:
            plc = struct.unpack_from("!H", opt, 2)[0] & 0x7
            if plc < len(PLC_LENGTHS):
                raw = bytes(opt[4:16]) + bytes(4)
                net = ipaddress.IPv6Network((raw, PLC_LENGTHS[plc]), strict=False)
                pref64 = str(net)
        off += olen
    return RaFact(router, lifetime, tuple(prefixes), tuple(rdnss), pref64)


def parse_lease6(data: bytes) -> tuple[int, int, tuple[tuple[str, int, int], ...]] | None:
    """(T1, T2, ((prefix, preferred, valid), ...)) of the IA_PD in a DHCPv6 reply, or None.

    dhcpcd stores the server's last reply as it came (RFC 8415: msg-type, transaction id,
    options); IA_PD is option 25 and carries IAPREFIX options (26).
    """
    if len(data) < 4:
        return None
    off = 4
    while off + 4 <= len(data):
        code, length = struct.unpack_from("!HH", data, off)
        body = data[off + 4 : off + 4 + length]
        off += 4 + length
        if code != 25 or len(body) < 12:
            continue
        _iaid, t1, t2 = struct.unpack_from("!III", body, 0)
        prefixes = []
        sub = 12
        while sub + 4 <= len(body):
            scode, slen = struct.unpack_from("!HH", body, sub)
            sbody = body[sub + 4 : sub + 4 + slen]
            sub += 4 + slen
            if scode == 26 and len(sbody) >= 25:
                preferred, valid, plen = struct.unpack_from("!IIB", sbody, 0)
                net = ipaddress.IPv6Network((bytes(sbody[9:25]), plen), strict=False)
                prefixes.append((str(net), preferred, valid))
        return t1, t2, tuple(prefixes)
    return None


DIG_STATUS = re.compile(r"->>HEADER<<-.*status: ([A-Z]+)")


def parse_dig(output: str) -> str:
    """The rcode dig printed (NOERROR, NXDOMAIN, SERVFAIL, ...), else what went wrong."""
    m = DIG_STATUS.search(output)
    if m:
        return m.group(1)
    for line in output.splitlines():
        if line.startswith(";;") and ("timed out" in line or "no servers" in line):
            return "no answer (" + line.lstrip("; ").strip() + ")"
    return "no answer"


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


# --- evaluation (pure) -------------------------------------------------------------------


def evaluate(f: Facts, cfg: HostConfig) -> list[Check]:
    """The checks, in the order a person would fix them."""
    out: list[Check] = []
    add = out.append
    mx = cfg.mux
    static = bool(mx.static_addresses)
    unit_hint = "systemctl enable --now netmux.target (or: netmux mux up)"

    if not f.root:
        add(
            Check(
                "root",
                "warn",
                "not running as root: most probes need root",
                "run `sudo netmux doctor`",
            )
        )
        add(Check("kernel.links", "skip", "link kinds not probed: needs root"))
        state: Status = "ok" if f.mux_exists else "fail"
        add(
            Check(
                "mux.namespace",
                state,
                f"/run/netns/{mx.netns} " + ("exists" if f.mux_exists else "does not exist"),
                "" if f.mux_exists else unit_hint,
            )
        )
        add(Check("daemons", "skip", "cannot see other namespaces' processes without root"))
        return out

    # kernel
    if f.kinds is None:
        add(Check("kernel.links", "skip", f"link kinds not probed: {f.kinds_error or 'no root'}"))
    else:
        k = f.kinds
        have = ", ".join(f"{n} {'yes' if k.get(n) else 'no'}" for n in KINDS)
        add(
            _pass_or_fail(
                "kernel.macvlan",
                bool(k.get("macvlan")),
                "macvlan links can be created",
                f"the kernel cannot create macvlan links ({have})",
                "load the module (modprobe macvlan) or use a kernel with CONFIG_MACVLAN",
            )
        )
        add(
            _pass_or_fail(
                "kernel.macvtap",
                bool(k.get("macvtap")),
                "macvtap links can be created (VM workloads)",
                'no macvtap: workloads with kind = "vm" cannot start',
                "modprobe macvtap, or a kernel with CONFIG_MACVTAP",
                "warn",
            )
        )
        parents = [n for n in ("dummy", "veth", "bridge") if k.get(n)]
        in_use = f.parent.kind if f.parent else None
        note = f"; mux's parent {mx.parent} is a {in_use}" if in_use else ""
        if not parents:
            add(
                Check(
                    "kernel.parent",
                    "fail",
                    f"none of dummy, veth, bridge can be created ({have})",
                    "a kernel with CONFIG_DUMMY, CONFIG_VETH or CONFIG_BRIDGE",
                )
            )
        elif not k.get("dummy"):
            add(
                Check(
                    "kernel.parent",
                    "info",
                    f"no dummy links: the parent falls back to {parents[0]}{note}",
                )
            )
        else:
            add(Check("kernel.parent", "ok", f"dummy links available{note}"))
        add(
            Check(
                "kernel.ipvlan",
                "info",
                "ipvlan available"
                if k.get("ipvlan")
                else "no ipvlan (not needed: netmux uses macvlan)",
            )
        )

    # mux
    if not f.mux_exists:
        add(
            Check(
                "mux.namespace", "fail", f"network namespace {mx.netns!r} does not exist", unit_hint
            )
        )
        for cid in ("mux.links", "mux.forwarding", "mux.prefix", "ra", "dns"):
            add(Check(cid, "skip", "mux is not up"))
    else:
        add(Check("mux.namespace", "ok", f"/run/netns/{mx.netns} exists"))
        bad = [
            f"{name} {'missing' if lf is None else 'down'}"
            for name, lf in ((mx.parent, f.parent), (mx.gateway, f.gateway))
            if lf is None or not lf.up
        ]
        if bad:
            add(
                Check(
                    "mux.links",
                    "fail",
                    "; ".join(bad),
                    "systemctl restart netmux-mux.service (or: netmux mux up)",
                )
            )
        else:
            kinds = f"{mx.parent} ({f.parent.kind if f.parent else '?'}), {mx.gateway}"
            add(Check("mux.links", "ok", f"{kinds} up"))
        if f.uplinks:
            add(Check("mux.uplinks", "ok", "uplink NICs in mux: " + ", ".join(f.uplinks)))
        elif static:
            add(Check("mux.uplinks", "info", "no uplink NIC in mux (static prefix configured)"))
        else:
            add(
                Check(
                    "mux.uplinks",
                    "fail",
                    "no NIC matching mux.uplinks ("
                    + ", ".join(mx.uplinks)
                    + ") is in mux: no prefix delegation possible",
                    "set [mux] uplinks in netmux.toml to your NIC's name, then "
                    "systemctl restart netmux-mux.service",
                )
            )
        if f.forwarding is None:
            add(Check("mux.forwarding", "skip", "could not read forwarding in mux"))
        elif f.forwarding == "1":
            add(Check("mux.forwarding", "ok", "IPv6 forwarding is on in mux"))
        else:
            add(
                Check(
                    "mux.forwarding",
                    "fail",
                    "IPv6 forwarding is off in mux: nothing is routed, and re-created "
                    "workloads wait up to a minute for router advertisements",
                    f"netmux mux up (or: ip netns exec {mx.netns} sysctl -w "
                    "net.ipv6.conf.all.forwarding=1)",
                )
            )
        out += _prefix_checks(f, cfg)
        out += _ra_check(f, cfg)

    out += _neigh_checks(f)
    out += _host_key_checks(f, cfg)
    out += _nat64_checks(f, cfg)
    out += _daemon_checks(f, cfg)
    if f.mux_exists:
        out += _dns_checks(f, cfg)
    out += _pd_checks(f, cfg)
    out += _sink_checks(f, cfg)
    out += _hosts_checks(f, cfg)
    return out


def _hosts_checks(f: Facts, cfg: HostConfig) -> list[Check]:
    """[hosts]: a member's key and lease at the primary; a primary's Knot part."""
    h, got = cfg.hosts, f.hosts
    if not h.role or got is None:
        return []
    if h.role == "primary":
        if not got.key:
            return [
                Check(
                    "hosts.primary",
                    "fail",
                    f"{h.directory}/hosts.conf is missing: Knot serves no other host's zone",
                    "systemctl restart netmux@dns",
                )
            ]
        return [Check("hosts.primary", "ok", f"primary: {h.directory}/hosts.conf")]
    if not got.key:
        return [
            Check(
                "hosts.key",
                "fail",
                f"{h.key} is missing: this host has not joined",
                "`netmux host add NAME` on the primary, then `netmux host join FILE`",
            )
        ]
    if got.error:
        return [
            Check(
                "hosts.lease",
                "fail",
                f"the primary {h.primary} did not answer: {got.error}",
                "check the route to the primary and its Knot (journalctl -u netmux@dns there)",
            )
        ]
    if got.lease_age is None:
        return [
            Check(
                "hosts.lease",
                "fail",
                "the primary holds no lease of this host: "
                "phonebookd does not refresh it, so its names are gone there",
                "systemctl restart phonebookd; journalctl -u phonebookd",
            )
        ]
    if got.lease_age > h.lease:
        return [
            Check(
                "hosts.lease",
                "warn",
                f"the last refresh at the primary was "
                f"{_ago(got.lease_age)}, more than the lease ({h.lease:g} s)",
                "journalctl -u phonebookd (the hosts sink)",
            )
        ]
    return [Check("hosts.lease", "ok", f"refreshed at the primary {_ago(got.lease_age)}")]


def probe_hosts(cfg: HostConfig, now: float | None = None) -> HostsFact | None:
    """Reads only: the key file, and the lease TXT at the primary (one query)."""
    h = cfg.hosts
    if h.role == "primary":
        return HostsFact(key=(h.directory / "hosts.conf").exists())
    if h.role != "member":
        return None
    if not h.key.exists():
        return HostsFact(key=False)
    if not h.primary:
        return HostsFact(error="[hosts] primary is empty")
    import dns.message
    import dns.query

    from . import hosts

    zone = cfg.public_zone.lower()
    q = dns.message.make_query(f"{hosts.LEASE_LABEL}.{zone}.", "TXT")
    try:
        r = dns.query.udp(q, h.primary, timeout=2.0, port=h.port)
    except Exception as e:
        return HostsFact(error=str(e) or type(e).__name__)
    rows = [
        (rr.name.to_text().rstrip(".").lower(), "TXT", rd.to_text()) for rr in r.answer for rd in rr
    ]
    lease = hosts.zone_lease(zone, rows)
    t = time.time() if now is None else now
    return HostsFact(lease_age=None if lease is None else max(0.0, t - lease.stamp))


def _pass_or_fail(
    check: str, ok: bool, passed: str, failed: str, fix: str, bad: Status = "fail"
) -> Check:
    """A check with two outcomes: ok, or `bad` (fail, or warn) with the fix to apply."""
    return Check(check, "ok", passed) if ok else Check(check, bad, failed, fix)


def _global(addrs: Iterable[str]) -> list[str]:
    found = []
    for a in addrs:
        ip = ipaddress.IPv6Interface(a).ip
        if not (ip.is_link_local or ip in ULA):
            found.append(a)
    return found


def _prefix_checks(f: Facts, cfg: HostConfig) -> list[Check]:
    out = []
    gw = cfg.mux.gateway
    glob = _global(f.gateway_addresses)
    if glob:
        out.append(Check("mux.prefix", "ok", f"{gw} has " + ", ".join(glob)))
    elif cfg.mux.static_addresses:
        out.append(
            Check(
                "mux.prefix",
                "fail",
                f"{gw} has no global address although mux.static_addresses is set",
                "systemctl restart netmux-mux.service",
            )
        )
    else:
        out.append(
            Check(
                "mux.prefix",
                "fail",
                f"{gw} has no global address: no prefix was delegated",
                "check that netmux-dhcpcd.service runs and that the "
                'router delegates prefixes (docs/operations.md, "Router '
                'configuration"); or set [mux] static_addresses',
            )
        )
    out.append(
        _pass_or_fail(
            "mux.ula",
            any(ipaddress.IPv6Interface(a) == cfg.mux.ula for a in f.gateway_addresses),
            f"{gw} has {cfg.mux.ula}",
            f"{gw} lacks its ULA {cfg.mux.ula}",
            "systemctl restart netmux-mux.service (or: netmux mux up)",
        )
    )
    return out


def _ra_check(f: Facts, cfg: HostConfig) -> list[Check]:
    if f.ra is None:
        fix = "systemctl start netmux-radvd.service"
        if not f.daemons.get("radvd"):
            fix += " (radvd is not running in mux)"
        why = f.ra_error or "no router advertisement answered a solicitation"
        return [Check("ra", "fail", why, fix)]
    ra = f.ra
    parts = ["prefixes " + (", ".join(ra.prefixes) or "none")]
    if ra.rdnss:
        parts.append("RDNSS " + ", ".join(ra.rdnss))
    if ra.pref64:
        parts.append("PREF64 " + ra.pref64)
    detail = f"RA from {ra.router}: " + "; ".join(parts)
    if ra.lifetime == 0:
        return [
            Check(
                "ra",
                "warn",
                detail + "; router lifetime 0: workloads get no default route",
                "systemctl restart netmux-radvd.service",
            )
        ]
    glob = [p for p in ra.prefixes if ipaddress.IPv6Network(p)[0] not in ULA]
    if not glob:
        return [
            Check(
                "ra",
                "warn",
                detail + "; no global prefix advertised",
                "a global prefix on the gateway (see mux.prefix)",
            )
        ]
    return [Check("ra", "ok", detail)]


# Each running workload holds ~2 IPv6 neighbour entries (its router in its namespace,
# itself on gw0 in mux) in the one table all namespaces share; sysctl/90-netmux.conf.
NEIGH_PER_WORKLOAD = 2
NEIGH_HEADROOM = 256
NEIGH_SYSCTL = "/usr/lib/sysctl.d/90-netmux.conf"


def _neigh_checks(f: Facts) -> list[Check]:
    if f.neigh_gc_thresh3 is None:
        return [Check("kernel.neigh", "skip", "could not read net.ipv6.neigh.default.gc_thresh3")]
    limit, n = f.neigh_gc_thresh3, f.workloads
    room = max(0, (limit - NEIGH_HEADROOM) // NEIGH_PER_WORKLOAD)
    detail = f"IPv6 neighbour table holds {limit} entries: room for ~{room} workloads ({n} now)"
    if n * NEIGH_PER_WORKLOAD + NEIGH_HEADROOM > limit:
        fix = f"sysctl --system (netmux ships {NEIGH_SYSCTL}), or raise gc_thresh2/3"
        return [Check("kernel.neigh", "warn", detail + ": new workloads may get no address", fix)]
    return [Check("kernel.neigh", "ok", detail)]


def _host_key_checks(f: Facts, cfg: HostConfig) -> list[Check]:
    """A lost host key changes every workload's MAC and addresses: say so loudly."""
    path = cfg.paths.host_key
    if f.other_key:
        what = "was lost and re-created or replaced" if f.host_key else "is missing"
        return [
            Check(
                "host_key",
                "fail",
                f"{path} {what}: workloads {', '.join(f.other_key)} were made with another "
                "key; their MACs and addresses change on the next start",
                f"restore {path} (32 bytes, mode 0600) from a backup, then "
                "`netmux down NAME && netmux up NAME`",
            )
        ]
    if not f.host_key:
        return [Check("host_key", "info", f"no {path} yet: the first `netmux up` makes it")]
    return [Check("host_key", "ok", f"{path} matches every workload's state")]


def nat64_engine(f: Facts, cfg: HostConfig) -> nat64.Engine | None:
    """The engine these facts choose (None: not probed, or NAT64 off)."""
    if not cfg.nat64.enabled or f.nat64 is None:
        return None
    return nat64.choose(f.nat64, cfg.nat64.engine)


def _nat64_checks(f: Facts, cfg: HostConfig) -> list[Check]:
    if not cfg.nat64.enabled:
        return [Check("nat64.engine", "info", "NAT64 is off ([nat64] enabled = false)")]
    eng = nat64_engine(f, cfg)
    if eng is None:
        return [Check("nat64.engine", "skip", "NAT64 engines not probed (needs root)")]
    if eng.name == "none":
        fix = (
            "apt install jool-dkms jool-tools linux-headers-$(uname -r) (docs/operations.md)"
            if cfg.nat64.engine == "jool"
            else "apt install tayga (or set [nat64] enabled = false)"
        )
        return [Check("nat64.engine", "fail", f"no NAT64 engine: {eng.reason}", fix)]
    out = [Check("nat64.engine", "ok", f"NAT64 engine: {eng.name} ({eng.reason})")]
    if eng.name == "jool" and f.mux_exists and f.jool_instance is not None:
        out.append(
            _pass_or_fail(
                "nat64.jool",
                f.jool_instance,
                f"Jool instance netmux runs in {cfg.mux.netns}",
                f"no Jool instance netmux in {cfg.mux.netns}",
                "systemctl start netmux-jool.service",
            )
        )
    return out


def _daemon_checks(f: Facts, cfg: HostConfig) -> list[Check]:
    out = []
    mx = cfg.mux.netns
    eng = nat64_engine(f, cfg)
    want = {
        "radvd": (True, "systemctl start netmux-radvd.service"),
        "dhcpcd": (
            not cfg.mux.static_addresses,
            "systemctl start netmux-dhcpcd.service",
        ),
        "tayga": (
            cfg.nat64.enabled and (eng is None or eng.name == "tayga"),
            "apt install tayga; systemctl start netmux-tayga.service "
            "(or set [nat64] enabled = false)",
        ),
    }
    for name in MUX_DAEMONS:
        needed, fix = want[name]
        pids = f.daemons.get(name, ())
        if pids:
            out.append(
                Check(
                    f"daemons.{name}",
                    "ok",
                    f"{name} runs in {mx} (pid " + ", ".join(map(str, pids)) + ")",
                )
            )
        elif not f.mux_exists:
            out.append(Check(f"daemons.{name}", "skip", "mux is not up"))
        elif needed:
            out.append(Check(f"daemons.{name}", "fail", f"{name} is not running in {mx}", fix))
        else:
            out.append(
                Check(
                    f"daemons.{name}",
                    "info",
                    f"{name} not running (not needed: "
                    + (
                        "static prefix"
                        if name == "dhcpcd"
                        else "NAT64 runs in Jool"
                        if cfg.nat64.enabled
                        else "NAT64 off"
                    )
                    + ")",
                )
            )
    out.append(
        _pass_or_fail(
            "daemons.phonebookd",
            bool(f.phonebookd),
            "phonebookd runs (pid " + ", ".join(map(str, f.phonebookd)) + ")",
            "phonebookd is not running: workloads are not published in DNS",
            "systemctl start phonebookd.service",
        )
    )
    return out


def _dns_checks(f: Facts, cfg: HostConfig) -> list[Check]:
    res = cfg.resolver.address
    if not f.dig:
        return [Check("dns", "skip", "dig is not installed", "apt install bind9-dnsutils")]
    out = []
    for zone, rcode in f.dns.items():
        if rcode == "NOERROR":
            out.append(Check(f"dns.{zone}", "ok", f"{res} answers SOA {zone}."))
        elif rcode.startswith("no answer"):
            out.append(
                Check(
                    f"dns.{zone}",
                    "fail",
                    f"the resolver {res} does not answer: {rcode}",
                    "systemctl start netmux@resolver.service",
                )
            )
        else:
            out.append(
                Check(
                    f"dns.{zone}",
                    "fail",
                    f"{res} answers SOA {zone}. with {rcode}",
                    "systemctl start netmux@dns.service phonebookd.service; "
                    "journalctl -u netmux@resolver -u netmux@dns",
                )
            )
    return out


def _pd_checks(f: Facts, cfg: HostConfig) -> list[Check]:
    if cfg.mux.static_addresses:
        return [Check("pd", "info", "static prefix configured: no DHCPv6-PD")]
    if not f.mux_exists and not f.leases:
        return [Check("pd", "skip", "mux is not up")]
    if not f.leases:
        return [
            Check(
                "pd",
                "fail",
                f"no DHCPv6-PD lease from dhcpcd under {cfg.paths.state_dir / 'dhcpcd'}",
                "systemctl status netmux-dhcpcd.service; check that the router delegates prefixes",
            )
        ]
    out = []
    for lease in f.leases:
        pfx = ", ".join(p for p, _, _ in lease.prefixes) or "no prefix"
        valid = min((v for _, _, v in lease.prefixes), default=0)
        detail = f"{Path(lease.path).name}: {pfx}, renewed {_ago(lease.age)} ago"
        if not lease.prefixes or lease.age >= valid:
            out.append(
                Check(
                    "pd",
                    "fail",
                    detail + " (expired)",
                    "systemctl restart netmux-dhcpcd.service; check the router",
                )
            )
        elif lease.t2 and lease.age > lease.t2:
            out.append(
                Check(
                    "pd",
                    "warn",
                    detail + f" (past T2 {lease.t2} s: rebinding)",
                    "journalctl -u netmux-dhcpcd; is the router reachable?",
                )
            )
        else:
            left = valid - lease.age
            out.append(Check("pd", "ok", detail + f", valid for {_ago(left)} more"))
    return out


def _sink_checks(f: Facts, cfg: HostConfig) -> list[Check]:
    """phonebookd can only publish through sinks that can work."""
    pb = cfg.phonebook
    problems = []
    if "tinydns" in pb.sinks and not f.tinydns_data:
        problems.append(
            (
                f"the tinydns sink needs {pb.tinydns_data}, which is missing",
                'apt install tinydns, or [phonebook] sinks = ["rfc2136"]',
            )
        )
    if "rfc2136" in pb.sinks and not pb.server:
        problems.append(
            (
                "the rfc2136 sink has no server ([phonebook] server is empty)",
                "set [phonebook] server to the address of netmux@dns (Knot)",
            )
        )
    if problems:
        return [
            Check(
                "phonebook.sinks",
                "fail",
                "; ".join(p for p, _ in problems),
                "; ".join(x for _, x in problems),
            )
        ]
    return [Check("phonebook.sinks", "ok", "sinks: " + ", ".join(pb.sinks))]


def healthy(checks: Iterable[Check]) -> bool:
    return not any(c.status == "fail" for c in checks)


MARK = {"ok": "ok", "info": "--", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def render_text(checks: list[Check]) -> str:
    width = max((len(c.id) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{MARK[c.status]:>4}  {c.id:<{width}}  {c.detail}")
        if c.fix and c.status in ("fail", "warn"):
            lines.append(f"{'':>4}  {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    if failed:
        lines.append(f"netmux doctor: {failed} problem(s), {warned} warning(s)")
    else:
        lines.append(f"netmux doctor: all is well ({warned} warning(s))")
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    return json.dumps({"ok": healthy(checks), "checks": [asdict(c) for c in checks]}, indent=2)


# --- probes (side effects, narrow) -------------------------------------------------------


def probe_kinds() -> dict[str, bool]:
    """Which link kinds this kernel creates, tried in a throwaway namespace."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    def run(_fd: int) -> dict[str, bool]:
        found: dict[str, bool] = {}
        with IPRoute() as ipr:

            def add(kind: str, **kw: Any) -> bool:
                try:
                    ipr.link("add", kind=kind, **kw)
                except NetlinkError:
                    return False
                return True

            found["veth"] = add("veth", ifname="p0", peer="p1")
            found["dummy"] = add("dummy", ifname="d0")
            found["bridge"] = add("bridge", ifname="b0")
            parent = next(
                (
                    n
                    for n, ok in (
                        ("p0", found["veth"]),
                        ("b0", found["bridge"]),
                        ("d0", found["dummy"]),
                    )
                    if ok
                ),
                None,
            )
            if parent is None:
                return {**found, "macvlan": False, "macvtap": False, "ipvlan": False}
            idx = ipr.link_lookup(ifname=parent)[0]
            found["macvlan"] = add("macvlan", ifname="mv0", link=idx, macvlan_mode="bridge")
            found["macvtap"] = add("macvtap", ifname="mt0", link=idx, macvtap_mode="bridge")
            found["ipvlan"] = add("ipvlan", ifname="iv0", link=idx, ipvlan_mode=0)
        return found

    # the IPRoute socket must be opened inside the namespace: do it all in the thread
    kinds: dict[str, bool] = nsutil.run_in_new_netns(run)
    return kinds


def _link_fact(ipr: Any, ifname: str) -> LinkFact | None:
    from . import links

    info = links.link_info(ipr, ifname)
    if info is None:
        return None
    return LinkFact(info["kind"], bool(info["up"]))


def _addresses(ipr: Any, ifname: str) -> tuple[str, ...]:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        return ()
    out = []
    for msg in ipr.get_addr(family=socket.AF_INET6, index=idx[0]):
        out.append(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
    return tuple(out)


def _usable_link_local(ipr: Any, idx: int) -> bool:
    for msg in ipr.get_addr(family=socket.AF_INET6, index=idx):
        addr = str(msg.get_attr("IFA_ADDRESS"))
        flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
        if addr.startswith("fe80:") and not flags & IFA_F_TENTATIVE:
            return True
    return False


def probe_ra(cfg: HostConfig, timeout: float = 3.0) -> RaFact:
    """Send a router solicitation from a throwaway namespace with a macvlan on mux's
    parent (like a workload's) and return the advertisement that answers it."""
    from . import links

    mx = cfg.mux

    def run(nsfd: int) -> RaFact:
        from pyroute2 import IPRoute

        with links.iproute(mx.netns) as mipr:
            parent = links.link_index(mipr, mx.parent)
            if parent is None:
                raise OSError(errno.ENODEV, f"{mx.parent} is missing in {mx.netns}")
            mipr.link(
                "add",
                ifname="probe0",
                kind="macvlan",
                link=parent,
                macvlan_mode="bridge",
                net_ns_fd=nsfd,
            )
        for key, value in (("accept_dad", "0"), ("accept_ra", "0"), ("router_solicitations", "0")):
            Path(f"/proc/sys/net/ipv6/conf/probe0/{key}").write_text(value)
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname="probe0")[0]
            ipr.link("set", index=idx, state="up")
            mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
            deadline = time.monotonic() + timeout
            while not _usable_link_local(ipr, idx):
                if time.monotonic() > deadline:
                    raise TimeoutError("the probe link got no link-local address")
                time.sleep(0.01)
        return _solicit(idx, mac, deadline)

    ra: RaFact = nsutil.run_in_new_netns(run)
    return ra


def _solicit(ifindex: int, mac: str, deadline: float) -> RaFact:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"probe0")
        slla = bytes([1, 1]) + bytes.fromhex(mac.replace(":", ""))
        rs = bytes([133, 0, 0, 0, 0, 0, 0, 0]) + slla
        next_rs = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError("no router advertisement answered a solicitation")
            if now >= next_rs:
                try:
                    s.sendto(rs, ("ff02::2", 0, 0, ifindex))
                    next_rs = now + 0.5
                except OSError as e:  # the link-local address is not quite ready yet
                    if e.errno != errno.EADDRNOTAVAIL:
                        raise
                    next_rs = now + 0.05
            s.settimeout(min(deadline, next_rs) - now)
            try:
                data, src = s.recvfrom(65535)
            except TimeoutError:
                continue
            ra = parse_ra(data, str(src[0]).split("%")[0])
            if ra is not None:
                return ra
    finally:
        s.close()


def _netns_inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def probe_processes(mux_netns: str) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
    """PIDs of radvd/dhcpcd/tayga whose netns is mux's, and of phonebookd anywhere."""
    target = _netns_inode(str(nsutil.netns_path(mux_netns)))
    daemons: dict[str, list[int]] = {n: [] for n in MUX_DAEMONS}
    phonebook: list[int] = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            comm = Path(f"/proc/{d}/comm").read_text().strip()
            if comm in daemons:
                if target is not None and _netns_inode(f"/proc/{d}/ns/net") == target:
                    daemons[comm].append(int(d))
            elif comm == "phonebookd" or (
                comm.startswith("python")
                and b"netmux.phonebook" in Path(f"/proc/{d}/cmdline").read_bytes()
            ):
                phonebook.append(int(d))
        except OSError:
            continue
    return {k: tuple(v) for k, v in daemons.items()}, tuple(phonebook)


def probe_dns(cfg: HostConfig) -> dict[str, str]:
    """dig SOA of the internal and the host zone at the resolver, from inside mux."""
    out = {}
    for zone in (cfg.dns.internal_zone.rstrip("."), cfg.public_zone):
        argv = [
            "nsenter",
            f"--net={nsutil.netns_path(cfg.mux.netns)}",
            "dig",
            "+time=1",
            "+tries=1",
            f"@{cfg.resolver.address}",
            f"{zone}.",
            "SOA",
        ]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            out[zone] = parse_dig(r.stdout + r.stderr)
        except subprocess.TimeoutExpired:
            out[zone] = "no answer (dig timed out)"
    return out


def probe_leases(cfg: HostConfig, now: float | None = None) -> tuple[LeaseFact, ...]:
    now = time.time() if now is None else now
    out = []
    # netmux-dhcpcd.service binds STATE_DIR/dhcpcd over /var/lib/dhcpcd; the lab keeps
    # its dhcpcd's state under RUN_DIR/lab/dhcpcd-state (netmux.lab.uplink.start_dhcpcd).
    dirs = (cfg.paths.state_dir / "dhcpcd", cfg.paths.run_dir / "lab" / "dhcpcd-state")
    for p in sorted(f for d in dirs for f in d.glob("*.lease6")):
        try:
            parsed = parse_lease6(p.read_bytes())
            age = now - p.stat().st_mtime
        except OSError:
            continue
        if parsed is not None:
            t1, t2, prefixes = parsed
            out.append(LeaseFact(str(p), age, t1, t2, prefixes))
    return tuple(out)


def gather(cfg: HostConfig, ra_timeout: float = 3.0) -> Facts:
    """Run every probe. Nothing here changes the host beyond throwaway namespaces."""
    from . import config as cfgmod
    from . import links

    if os.geteuid() != 0:
        return Facts(root=False, mux_exists=links.netns_exists(cfg.mux.netns))
    facts: dict[str, Any] = {"dig": bool(shutil.which("dig"))}
    try:
        facts["kinds"] = probe_kinds()
    except Exception as e:  # a probe that cannot run is reported, not fatal
        facts["kinds_error"] = str(e)
    mx = cfg.mux
    facts["mux_exists"] = links.netns_exists(mx.netns)
    if facts["mux_exists"]:
        with links.iproute(mx.netns) as ipr:
            facts["parent"] = _link_fact(ipr, mx.parent)
            facts["gateway"] = _link_fact(ipr, mx.gateway)
            facts["gateway_addresses"] = _addresses(ipr, mx.gateway)
            names = [m.get_attr("IFLA_IFNAME") for m in ipr.get_links()]
            facts["uplinks"] = tuple(n for n in names if n and cfgmod.uplink_matches(mx, n))
        facts["forwarding"] = nsutil.read_sysctl(mx.netns, "net.ipv6.conf.all.forwarding")
        if facts["parent"] is not None:
            try:
                facts["ra"] = probe_ra(cfg, ra_timeout)
            except Exception as e:
                facts["ra_error"] = str(e) or type(e).__name__
        if facts["dig"]:
            facts["dns"] = probe_dns(cfg)
    facts["daemons"], facts["phonebookd"] = probe_processes(mx.netns)
    facts["leases"] = probe_leases(cfg)
    facts["tinydns_data"] = cfg.phonebook.tinydns_data.exists()
    facts["neigh_gc_thresh3"], facts["workloads"] = probe_neigh(cfg)
    facts["host_key"], facts["other_key"] = probe_host_key(cfg)
    facts["nat64"] = nat64.probe()
    eng = nat64_engine(Facts(nat64=facts["nat64"]), cfg)
    if facts["mux_exists"] and eng is not None and eng.name == "jool":
        facts["jool_instance"] = probe_jool(cfg)
    facts["hosts"] = probe_hosts(cfg)
    return Facts(**facts)


def probe_jool(cfg: HostConfig) -> bool:
    """Does mux have netmux's Jool instance (`jool -i netmux global display` succeeds)?"""
    from .render import jool

    r = subprocess.run(["ip", "netns", "exec", cfg.mux.netns, "jool", "-i", jool.INSTANCE,
                        "global", "display"], capture_output=True, check=False)  # fmt: skip
    return r.returncode == 0


def probe_host_key(cfg: HostConfig) -> tuple[bool, tuple[str, ...]]:
    """Does the key exist, and which workloads' state names another key (never makes one)."""
    from . import names, workload
    from .errors import StateError

    try:
        kid: str | None = names.key_id(names.load_host_key(cfg.paths.host_key, create=False))
    except StateError:
        kid = None
    exists = cfg.paths.host_key.exists()
    return exists, tuple(workload.other_key_workloads(cfg, kid))


def probe_neigh(cfg: HostConfig) -> tuple[int | None, int]:
    """The neighbour table's hard limit (one for every namespace) and the workload count."""
    from . import state

    try:
        limit: int | None = int(nsutil.read_sysctl(None, "net.ipv6.neigh.default.gc_thresh3") or "")
    except ValueError:
        limit = None
    return limit, len(state.known(cfg))


def cmd_doctor(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    checks = evaluate(gather(cfg), cfg)
    print(render_json(checks) if args.json else render_text(checks))
    return 0 if healthy(checks) else 1
