"""More than one host, for real (the topology: tests/hostsfix.py): a Knot primary, a Knot
secondary that learns the zones from the catalog, and host b sending its records by RFC
2136 with its own key, on a lease; b's resolver answers every host's names.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux import doctor, hosts, nsutil
from netmux.config import load_host
from netmux.errors import StateError
from netmux.phonebook.records import Record, Zones
from netmux.phonebook.service import make_sinks
from netmux.phonebook.sinks import Rfc2136Sink, UpdateServer, parse_tsig_key
from tests import hostsfix
from tests.conftest import stop_process
from tests.hostsfix import (
    CLIENT,
    PRI_B,
    RESOLVER,
    VPS_NS,
    VPS_OUT,
    WWW_A,
    WWW_B,
    World,
    dig,
    netmux,
    until,
)

WAIT = 30.0


@pytest.fixture
def world(
    tmp_path: Path,
    netns: Callable[[str], str],
    procs: Callable[..., subprocess.Popen[bytes]],
    uname: Callable[[str], str],
) -> World:
    return hostsfix.build(tmp_path, netns, uname, procs)


# How Knot refuses an update whose key its ACL does not allow (see the test below).
REFUSED_KEY = "BADKEY|requires a TSIG"


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
    # `netmux doctor` on b sees its lease at the primary.
    fact = nsutil.run_in_netns(w.b, lambda: doctor.probe_hosts(load_host(w.cfg_b)))
    assert fact is not None and fact.lease_age is not None and not fact.error, fact
    r = netmux(w.pri, w.cfg_a, "host", "list", "--json")
    assert r.returncode == 0, r.stderr
    assert '"host": "b"' in r.stdout and '"2001:db8:b::/64"' in r.stdout, r.stdout

    # Host b's key cannot touch host a's zone, nor a's records from b's own zone.
    key_b = parse_tsig_key((w.tmp / "b" / "host.key").read_text(), "b")
    # (The key is not in that zone's ACL at all: Knot 3.2 answers NOTAUTH/BADKEY, Knot 3.4
    # NOTAUTH unsigned, which dnspython reports as "requires a TSIG". Refused either way.)
    for zone in ("a.example.org", "catalog.netmux.invalid"):
        msg = hosts.update_message(zone, key_b, lease=("x", 5))
        with pytest.raises(StateError, match=REFUSED_KEY):
            nsutil.run_in_netns(w.b, functools.partial(hosts.send, PRI_B, 53, msg))
    assert dig(w.pri, "::1", "_lease.a.example.org", "TXT") == ""
    # In its own zone, only address and TXT records (update-type): no NS hijack. Knot
    # refuses it the same way (no ACL rule matches the key for that update).
    ns = hosts.update_message("b.example.org", key_b)
    ns.add("sub.b.example.org.", 5, "NS", "ns.attacker.example.")
    with pytest.raises(StateError, match=REFUSED_KEY):
        nsutil.run_in_netns(w.b, lambda: hosts.send(PRI_B, 53, ns))
    assert dig(w.pri, "::1", "sub.b.example.org", "NS") == ""

    # The lease lapses: the primary's expiry pass removes b's records, the secondary follows.
    # (`netmux host expire`, as netmux-host-expire.timer runs it.)
    until(
        "the expiry pass removes b.example.org's records",
        lambda: "b.example.org: lease lapsed" in netmux(w.pri, w.cfg_a, "host", "expire").stdout,
    )
    assert dig(w.pri, "::1", "www.b.example.org") == ""
    # The same pass put the secondary's name into every zone's NS set (as delegated).
    for zone in ("a.example.org", "b.example.org"):
        until(
            f"{zone} NS on the secondary names it too",
            lambda zone=zone: f"{VPS_NS}." in dig(w.inet, VPS_OUT, zone, "NS").split(),
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
    # Removed with records in it and added again: the new zone starts empty (the old
    # journal was purged), under a new key.
    key_1 = (w.tmp / "hosts" / "keys" / "b.key").read_text()
    assert netmux(w.b, w.cfg_b, "host", "join", str(w.tmp / "hosts" / "b.join")).returncode == 0

    async def publish(sink: hosts.HostSink) -> None:
        sink.update(www(w))
        await asyncio.wait_for(sink.synced(), WAIT)
        await sink.abandon()

    run_sink(w, publish)
    until("www.b at the primary", lambda: dig(w.pri, "::1", "www.b.example.org") == WWW_B)
    r = netmux(w.pri, w.cfg_a, "host", "list")
    assert r.returncode == 0 and "b " in r.stdout and "2001:db8:b::/64" in r.stdout, r
    r = netmux(w.b, w.cfg_b, "host", "leave")
    assert r.returncode == 0, r.stderr
    assert dig(w.pri, "::1", "www.b.example.org") == ""
    run_sink(w, publish)
    assert (
        netmux(w.pri, w.cfg_a, "host", "remove", "b", "--knot-socket", str(w.socket)).returncode
        == 0
    )
    assert netmux(w.pri, w.cfg_a, *args).returncode == 0
    assert (w.tmp / "hosts" / "keys" / "b.key").read_text() != key_1
    until(
        "b.example.org served again",
        lambda: "dns.a.example.org." in dig(w.pri, "::1", "b.example.org", "NS"),
    )
    assert dig(w.pri, "::1", "www.b.example.org") == ""
    assert dig(w.pri, "::1", "_lease.b.example.org", "TXT") == ""


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
        sink = Rfc2136Sink(
            Zones.from_config(cfg_a), UpdateServer("::1", 53, cfg_a.phonebook.tsig_key)
        )
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
