"""Several netmux hosts for tests and bench: a Knot primary (host a), a Knot secondary in a
"vps" namespace that learns the zones from the catalog, host b with its own Knot and its
resolver workload's unbound, and an "internet" namespace behind the vps.

    [b] 2001:db8:b::2 --veth-- 2001:db8:b::1 [pri: knotd, zones a, b, catalog] 2001:db8:5::1
                                                    --veth-- 2001:db8:5::53 [vps: knotd]
                                        [internet] 2001:db8:6::2 --veth-- 2001:db8:6::1 [vps]

Host b's own Knot is at fd64:cafe::5 (unbound never asks ::1), its resolver at fd64:cafe::53.
Namespaces, link names and process starts come from the caller (pytest fixtures or the
bench), so each cleans up its own. The pieces it shares with `netmux lab up --hosts N`
(veth pairs, dig, the vps and internet addresses) are netmux/lab/multihost.py's.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Interface
from pathlib import Path

from netmux import hosts
from netmux.config import load_host
from netmux.errors import StateError
from netmux.lab import multihost as labhosts

PRI_B, B_ADDR = "2001:db8:b::1", "2001:db8:b::2"
# The vps and internet links, and the secondary's name, are the lab's (netmux/lab/multihost.py).
PRI_V, VPS = (str(a.ip) for a in labhosts.VPS_LINK)
VPS_OUT, INET = (str(a.ip) for a in labhosts.INET_LINK)
RESOLVER, CLIENT = "fd64:cafe::53", "fd64:cafe::2"
B_KNOT = "fd64:cafe::5"  # host b's own Knot (the dns workload): unbound never asks ::1
WWW_A = "2001:db8:a::80"
WWW_B = "2001:db8:b::80"
VPS_NS = labhosts.VPS_NS
WAIT = 30.0


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def veth(ns1: str, if1: str, a1: str, ns2: str, if2: str, a2: str) -> None:
    labhosts.veth(ns1, if1, IPv6Interface(f"{a1}/64"), ns2, if2, IPv6Interface(f"{a2}/64"))


def dig(ns: str, server: str, name: str, rtype: str = "AAAA") -> str:
    return labhosts.answers(ns, server, name, rtype)


def until(what: str, fn: Callable[[], bool], wait: float = 30.0) -> None:
    try:
        labhosts.wait_until(what, fn, wait)
    except StateError as e:
        raise AssertionError(str(e)) from None


def netmux(ns: str, cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "netmux.cli",
            "--config",
            str(cfg),
            *args,
        ],
        capture_output=True,
        text=True,
    )


@dataclass
class World:
    pri: str
    vps: str
    b: str
    inet: str
    primary: subprocess.Popen[bytes]
    cfg_a: Path
    cfg_b: Path
    socket: Path
    secondary_conf: Path
    tmp: Path


def _ok(r: subprocess.CompletedProcess[str]) -> None:
    if r.returncode != 0:
        raise AssertionError(r.stderr)


def build(
    tmp: Path,
    netns: Callable[[str], str],
    uname: Callable[[str], str],
    start: Callable[..., subprocess.Popen[bytes]],
    lease: float = 2.0,
) -> World:
    """Everything above, running: `netns(suffix)` makes a namespace, `uname(suffix)` a link
    name, `start(argv, **popen)` a process the caller stops."""
    pri, vps, b, inet = netns("pri"), netns("vps"), netns("hb"), netns("inet")
    veth(pri, uname("p"), PRI_B, b, uname("b"), B_ADDR)
    veth(pri, uname("v"), PRI_V, vps, uname("s"), VPS)
    veth(vps, uname("o"), VPS_OUT, inet, uname("i"), INET)
    sh("ip", "-n", b, "route", "add", "default", "via", PRI_B)
    sh("ip", "-n", vps, "route", "add", "default", "via", PRI_V)
    kdir = tmp / "knot-a"
    cfg_a = tmp / "a.toml"
    cfg_a.write_text(
        '[dns]\nhostname = "a"\ndomain = "example.org"\nttl = 5\n'
        f'[phonebook]\nserver = "::1"\ntsig_key = "{kdir}/phonebook.key"\n'
        f'[hosts]\nrole = "primary"\ndirectory = "{tmp}/hosts"\nlease = {lease}\n'
        f'secondaries = ["{VPS}"]\nsecondary_ns = ["{VPS_NS}"]\n'
        f'[paths]\nstate_dir = "{tmp}/state"\n'
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "netmux.phonebook.knot",
            str(kdir),
            "--config",
            str(cfg_a),
            "--listen",
            "::",
        ],
        capture_output=True,
        text=True,
    )
    _ok(r)
    log_a = (tmp / "knot-a.log").open("wb")
    primary = start(
        ["ip", "netns", "exec", pri, "knotd", "-c", str(kdir / "knot.conf")],
        stdout=log_a,
        stderr=subprocess.STDOUT,
    )
    sdir = tmp / "knot-vps"
    for sub in ("zones", "db", "run"):
        (sdir / sub).mkdir(parents=True)
    sconf = sdir / "knot.conf"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "netmux.hosts",
            "secondary",
            str(sdir),
            "--primary",
            PRI_V,
            "--key",
            str(tmp / "hosts" / f"{hosts.SECONDARY_KEY}.key"),
            "--listen",
            "::@53",
        ],
        capture_output=True,
        text=True,
    )
    _ok(r)
    sconf.write_text(r.stdout)
    log_s = (tmp / "knot-vps.log").open("wb")
    start(
        ["ip", "netns", "exec", vps, "knotd", "-c", str(sconf)],
        stdout=log_s,
        stderr=subprocess.STDOUT,
    )
    cfg_b = tmp / "b.toml"
    cfg_b.write_text(
        '[dns]\nhostname = "b"\ndomain = "example.org"\nttl = 5\n'
        f'[hosts]\nrole = "member"\nprimary = "{PRI_B}"\nkey = "{tmp}/b/host.key"\n'
        f'lease = {lease}\npeers = ["a"]\n'
        f'[phonebook]\nsinks = ["rfc2136"]\nserver = "{B_KNOT}"\n'
        f'tsig_key = "{tmp}/knot-b/phonebook.key"\n'
        f'[resolver]\naddress = "{RESOLVER}"\n[nat64]\nenabled = false\n'
        f'[paths]\nstate_dir = "{tmp}/state-b"\n'
    )
    # Host b's own Knot (its zones, the phonebook's rfc2136 sink) and its resolver.
    for addr in (RESOLVER, CLIENT, B_KNOT):
        sh("ip", "-n", b, "addr", "add", f"{addr}/64", "dev", "lo", "nodad")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "netmux.phonebook.knot",
            str(tmp / "knot-b"),
            "--config",
            str(cfg_b),
            "--listen",
            B_KNOT,
        ],
        capture_output=True,
        text=True,
    )
    _ok(r)
    start(
        ["ip", "netns", "exec", b, "knotd", "-c", str(tmp / "knot-b" / "knot.conf")],
        stdout=(tmp / "knot-b.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    from netmux import daemons
    from netmux.render import unbound

    (tmp / "resolver").mkdir()
    uconf = tmp / "resolver" / "unbound.conf"
    uconf.write_text(unbound.render(load_host(cfg_b), daemons.unbound(), tmp / "resolver"))
    start(
        ["ip", "netns", "exec", b, "unbound", "-d", "-c", str(uconf)],
        stdout=(tmp / "unbound.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    w = World(pri, vps, b, inet, primary, cfg_a, cfg_b, kdir / "run" / "knot.sock", sconf, tmp)
    until(
        "the primary answers",
        lambda: "dns.a.example.org." in dig(pri, "::1", "a.example.org", "NS"),
    )
    until(
        "b's own Knot answers",
        lambda: "dns.b.example.org." in dig(b, B_KNOT, "b.example.org", "NS"),
    )
    return w
