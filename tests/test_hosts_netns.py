"""More than one host, for real: a Knot primary (host a), a Knot secondary in a "vps"
namespace that learns the zones from the catalog, and host b sending its records by RFC
2136 with its own key, on a lease.

    [b] 2001:db8:b::2 --veth-- 2001:db8:b::1 [pri: knotd, zones a, b, catalog] 2001:db8:5::1
                                                    --veth-- 2001:db8:5::53 [vps: knotd]
                                        [internet] 2001:db8:6::2 --veth-- 2001:db8:6::1 [vps]

Host b also runs its own Knot (::1, the phonebook's usual sink) and its resolver workload's
unbound (rendered by netmux.render.unbound) at fd64:cafe::53.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.tsig
import pytest

from netmux import hosts, nsutil
from netmux.config import load_host
from netmux.phonebook.records import Record, Zones
from netmux.phonebook.sinks import Rfc2136Sink, make_sinks, parse_tsig_key
from tests.conftest import stop_process

PRI_B, B_ADDR = "2001:db8:b::1", "2001:db8:b::2"
PRI_V, VPS = "2001:db8:5::1", "2001:db8:5::53"
VPS_OUT, INET = "2001:db8:6::1", "2001:db8:6::2"
RESOLVER, CLIENT = "fd64:cafe::53", "fd64:cafe::2"
B_KNOT = "fd64:cafe::5"  # host b's own Knot (the dns workload): unbound never asks ::1
WWW_A = "2001:db8:a::80"
WWW_B = "2001:db8:b::80"
WAIT = 30.0


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def veth(ns1: str, if1: str, a1: str, ns2: str, if2: str, a2: str) -> None:
    sh("ip", "-n", ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2)
    for ns, ifname, addr in ((ns1, if1, a1), (ns2, if2, a2)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", ifname, "nodad")
        sh("ip", "-n", ns, "link", "set", ifname, "up")


def dig(ns: str, server: str, name: str, rtype: str = "AAAA") -> str:
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "dig",
            f"@{server}",
            "+norec",
            "+short",
            "+time=1",
            "+tries=1",
            name,
            rtype,
        ],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip()


def until(what: str, fn: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not fn():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT:g}s: {what}")
        time.sleep(0.1)


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


@pytest.fixture
def world(
    tmp_path: Path,
    netns: Callable[[str], str],
    procs: Callable[..., subprocess.Popen[bytes]],
    uname: Callable[[str], str],
) -> Iterator[World]:
    pri, vps, b, inet = netns("pri"), netns("vps"), netns("hb"), netns("inet")
    veth(pri, uname("p"), PRI_B, b, uname("b"), B_ADDR)
    veth(pri, uname("v"), PRI_V, vps, uname("s"), VPS)
    veth(vps, uname("o"), VPS_OUT, inet, uname("i"), INET)
    sh("ip", "-n", b, "route", "add", "default", "via", PRI_B)
    sh("ip", "-n", vps, "route", "add", "default", "via", PRI_V)
    kdir = tmp_path / "knot-a"
    cfg_a = tmp_path / "a.toml"
    cfg_a.write_text(
        '[dns]\nhostname = "a"\ndomain = "example.org"\nttl = 5\n'
        f'[phonebook]\nserver = "::1"\ntsig_key = "{kdir}/phonebook.key"\n'
        f'[hosts]\nrole = "primary"\ndirectory = "{tmp_path}/hosts"\nlease = 2\n'
        f'secondaries = ["{VPS}"]\n'
        f'[paths]\nstate_dir = "{tmp_path}/state"\n'
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
    assert r.returncode == 0, r.stderr
    log_a = (tmp_path / "knot-a.log").open("wb")
    primary = procs(
        ["ip", "netns", "exec", pri, "knotd", "-c", str(kdir / "knot.conf")],
        stdout=log_a,
        stderr=subprocess.STDOUT,
    )
    sdir = tmp_path / "knot-vps"
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
            str(tmp_path / "hosts" / f"{hosts.SECONDARY_KEY}.key"),
            "--listen",
            "::@53",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    sconf.write_text(r.stdout)
    log_s = (tmp_path / "knot-vps.log").open("wb")
    procs(
        ["ip", "netns", "exec", vps, "knotd", "-c", str(sconf)],
        stdout=log_s,
        stderr=subprocess.STDOUT,
    )
    cfg_b = tmp_path / "b.toml"
    cfg_b.write_text(
        '[dns]\nhostname = "b"\ndomain = "example.org"\nttl = 5\n'
        f'[hosts]\nrole = "member"\nprimary = "{PRI_B}"\nkey = "{tmp_path}/b/host.key"\n'
        'lease = 2\npeers = ["a"]\n'
        f'[phonebook]\nsinks = ["rfc2136"]\nserver = "{B_KNOT}"\n'
        f'tsig_key = "{tmp_path}/knot-b/phonebook.key"\n'
        f'[resolver]\naddress = "{RESOLVER}"\n[nat64]\nenabled = false\n'
        f'[paths]\nstate_dir = "{tmp_path}/state-b"\n'
    )
    # Host b's own Knot (its zones, the phonebook's rfc2136 sink) and its resolver.
    for addr in (RESOLVER, CLIENT, B_KNOT):
        sh("ip", "-n", b, "addr", "add", f"{addr}/64", "dev", "lo", "nodad")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "netmux.phonebook.knot",
            str(tmp_path / "knot-b"),
            "--config",
            str(cfg_b),
            "--listen",
            B_KNOT,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    procs(
        ["ip", "netns", "exec", b, "knotd", "-c", str(tmp_path / "knot-b" / "knot.conf")],
        stdout=(tmp_path / "knot-b.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    from netmux import daemons
    from netmux.render import unbound

    (tmp_path / "resolver").mkdir()
    uconf = tmp_path / "resolver" / "unbound.conf"
    uconf.write_text(unbound.render(load_host(cfg_b), daemons.unbound(), tmp_path / "resolver"))
    procs(
        ["ip", "netns", "exec", b, "unbound", "-d", "-c", str(uconf)],
        stdout=(tmp_path / "unbound.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    w = World(pri, vps, b, inet, primary, cfg_a, cfg_b, kdir / "run" / "knot.sock", sconf, tmp_path)
    until(
        "the primary answers",
        lambda: "dns.a.example.org." in dig(pri, "::1", "a.example.org", "NS"),
    )
    until(
        "b's own Knot answers",
        lambda: "dns.b.example.org." in dig(b, B_KNOT, "b.example.org", "NS"),
    )
    yield w


def resolve(w: World, name: str) -> str:
    """Through host b's resolver workload (unbound), as a workload on b would."""
    r = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            w.b,
            "dig",
            f"@{RESOLVER}",
            "-b",
            CLIENT,
            "+short",
            "+time=1",
            "+tries=1",
            name,
            "AAAA",
        ],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip()


def run_sink(w: World, scenario: Callable[[hosts.HostSink], object]) -> None:
    cfg = load_host(w.cfg_b)
    sink = hosts.make_sink(cfg, Zones.from_config(cfg))
    assert sink is not None

    async def main() -> None:
        await scenario(sink)  # type: ignore[misc]

    nsutil.run_in_netns(w.b, lambda: asyncio.run(main()))


def www(w: World) -> list[Record]:
    return [Record("www.b.example.org", "AAAA", WWW_B, 5)]


@pytest.mark.netns
@pytest.mark.requires("knotd", "knotc", "dig")
def test_a_joined_host_is_served_by_the_primary_and_the_secondary_and_lapses(world: World) -> None:
    w = world
    r = netmux(
        w.pri, w.cfg_a, "host", "add", "b", "--address", PRI_B, "--knot-socket", str(w.socket)
    )
    assert r.returncode == 0, r.stderr
    join = w.tmp / "hosts" / "b.join"
    r = netmux(w.b, w.cfg_b, "host", "join", str(join))
    assert r.returncode == 0, r.stderr
    # The secondary learns both zones from the catalog, by itself.
    until(
        "a.example.org on the secondary",
        lambda: "dns.a.example.org." in dig(w.vps, "::1", "a.example.org", "NS"),
    )
    until(
        "b.example.org on the secondary",
        lambda: "dns.a.example.org." in dig(w.vps, "::1", "b.example.org", "NS"),
    )

    async def publish_then_switch_off(sink: hosts.HostSink) -> None:
        sink.update(www(w))
        await asyncio.wait_for(sink.synced(), WAIT)
        await sink.abandon()  # switched off: no unpublishing, no more refreshes

    run_sink(w, publish_then_switch_off)
    until("www.b on the primary", lambda: dig(w.pri, "::1", "www.b.example.org") == WWW_B)
    until(
        "www.b from the internet (the secondary)",
        lambda: dig(w.inet, VPS_OUT, "www.b.example.org") == WWW_B,
    )
    r = netmux(w.pri, w.cfg_a, "host", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert '"host": "b"' in r.stdout and '"2001:db8:b::/64"' in r.stdout, r.stdout

    # Host b's key cannot touch host a's zone, nor a's records from b's own zone.
    key_b = parse_tsig_key((w.tmp / "b" / "host.key").read_text(), "b")
    # (Knot answers NOTAUTH/BADKEY: the key is not in that zone's ACL at all.)
    for zone in ("a.example.org", "catalog.netmux.invalid"):
        msg = hosts.update_message(zone, key_b, lease=("x", 5))
        with pytest.raises(dns.tsig.PeerBadKey):
            nsutil.run_in_netns(w.b, lambda msg=msg: hosts.send(PRI_B, 53, msg))
    assert dig(w.pri, "::1", "_lease.a.example.org", "TXT") == ""
    # In its own zone, only address and TXT records (update-type): no NS hijack. Knot
    # refuses it the same way (no ACL rule matches the key for that update).
    ns = hosts.update_message("b.example.org", key_b)
    ns.add("sub.b.example.org.", 5, "NS", "ns.attacker.example.")
    with pytest.raises(dns.tsig.PeerBadKey):
        nsutil.run_in_netns(w.b, lambda: hosts.send(PRI_B, 53, ns))
    assert dig(w.pri, "::1", "sub.b.example.org", "NS") == ""

    # The lease lapses: the primary's expiry pass removes b's records, the secondary follows.
    removed: dict[str, object] = {}
    until(
        "the expiry pass removes b.example.org's records",
        lambda: bool(
            removed.update(nsutil.run_in_netns(w.pri, lambda: hosts.expire(load_host(w.cfg_a))))
            or "b.example.org" in removed
        ),
    )
    until("www.b gone from the secondary", lambda: dig(w.vps, "::1", "www.b.example.org") == "")

    # Back on: the next refresh brings the records back; a clean stop removes them.
    async def come_back_then_stop(sink: hosts.HostSink) -> None:
        sink.update(www(w))
        await asyncio.wait_for(sink.synced(), WAIT)
        await sink.close()

    run_sink(w, come_back_then_stop)
    assert dig(w.pri, "::1", "www.b.example.org") == ""
    assert dig(w.pri, "::1", "_lease.b.example.org", "TXT") == ""

    # Leaving: the zone leaves Knot and the catalog, so the secondary drops it too.
    r = netmux(w.pri, w.cfg_a, "host", "remove", "b", "--knot-socket", str(w.socket))
    assert r.returncode == 0, r.stderr
    until(
        "b.example.org gone from the secondary",
        lambda: "dns.a.example.org." not in dig(w.vps, "::1", "b.example.org", "NS"),
    )


@pytest.mark.netns
@pytest.mark.requires("knotd", "knotc", "dig")
def test_a_second_add_of_the_same_host_is_refused_and_changes_nothing(world: World) -> None:
    w = world
    args = ("host", "add", "b", "--address", PRI_B, "--knot-socket", str(w.socket))
    assert netmux(w.pri, w.cfg_a, *args).returncode == 0
    before = (w.tmp / "hosts" / "hosts.conf").read_text()
    r = netmux(w.pri, w.cfg_a, *args)
    assert r.returncode == 2 and "joined already" in r.stderr, r
    assert (w.tmp / "hosts" / "hosts.conf").read_text() == before


@pytest.mark.netns
@pytest.mark.requires("knotd", "knotc", "dig", "unbound")
def test_each_hosts_resolver_answers_for_every_host_and_its_own_without_the_primary(
    world: World,
) -> None:
    w = world
    r = netmux(
        w.pri, w.cfg_a, "host", "add", "b", "--address", PRI_B, "--knot-socket", str(w.socket)
    )
    assert r.returncode == 0, r.stderr
    assert netmux(w.b, w.cfg_b, "host", "join", str(w.tmp / "hosts" / "b.join")).returncode == 0
    cfg_a, cfg_b = load_host(w.cfg_a), load_host(w.cfg_b)

    async def primary_publishes() -> None:  # host a's phonebookd: its own sink, its own Knot
        sink = Rfc2136Sink(Zones.from_config(cfg_a), "::1", 53, cfg_a.phonebook.tsig_key)
        sink.update([Record("www.a.example.org", "AAAA", WWW_A, 5)])
        await asyncio.wait_for(sink.synced(), WAIT)
        await sink.close()

    nsutil.run_in_netns(w.pri, lambda: asyncio.run(primary_publishes()))

    async def b_publishes(names: list[str], primary_up: bool) -> None:
        zones = Zones.from_config(cfg_b)
        sinks = [s for s in make_sinks(cfg_b, zones) if s.name in ("rfc2136", "hosts")]
        assert sorted(s.name for s in sinks) == ["hosts", "rfc2136"]
        recs = [Record(f"{n}.b.example.org", "AAAA", WWW_B, 5) for n in names]
        for s in sinks:
            s.update(recs)
        waits = sinks if primary_up else [s for s in sinks if s.name == "rfc2136"]
        await asyncio.wait_for(asyncio.gather(*(s.synced() for s in waits)), WAIT)
        for s in sinks:
            await (s.abandon() if isinstance(s, hosts.HostSink) else s.close())

    nsutil.run_in_netns(w.b, lambda: asyncio.run(b_publishes(["www"], True)))
    until("www.a through b's resolver", lambda: resolve(w, "www.a.example.org") == WWW_A)
    until("www.b through b's resolver", lambda: resolve(w, "www.b.example.org") == WWW_B)
    until("www.b at the primary", lambda: dig(w.pri, "::1", "www.b.example.org") == WWW_B)

    # The primary goes down: b's own names, even new ones, still resolve on b.
    stop_process(w.primary)
    nsutil.run_in_netns(w.b, lambda: asyncio.run(b_publishes(["www", "new"], False)))
    until("new.b through b's resolver", lambda: resolve(w, "new.b.example.org") == WWW_B)
