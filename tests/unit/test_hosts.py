"""More than one host: the primary's Knot part, the secondary's knot.conf, leases and
expiry (pure), and the `netmux host` command's bad input."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from netmux import hosts
from netmux.config import parse_host
from netmux.errors import ConfigError, StateError, UsageError
from netmux.phonebook import knot
from netmux.phonebook.records import Zones
from netmux.phonebook.sinks import TsigKey, UpdateServer, render_tsig_key

SEC = IPv6Address("2001:db8:5::53")
KEY_B = TsigKey("host-b", "hmac-sha256", b"b" * 32)
KEY_C = TsigKey("host-c", "hmac-sha256", b"c" * 32)
KEY_S = TsigKey(hosts.SECONDARY_KEY, "hmac-sha256", b"s" * 32)
CAT = "catalog.netmux.invalid"


def joined() -> list[hosts.Joined]:
    return [
        hosts.Joined("c", "c.example.org", KEY_C),
        hosts.Joined("b", "b.example.org", KEY_B),
    ]


@pytest.mark.unit
def test_each_member_key_may_change_its_own_zone_only() -> None:
    text = hosts.render_primary_part(joined(), CAT, Path("/h/zones"), [SEC], KEY_S)
    zones = text.split("zone:\n", 1)[1]
    b = zones.split("  - domain: b.example.org.\n")[1].split("  - domain:")[0]
    c = zones.split("  - domain: c.example.org.\n")[1]
    assert "acl: [ phonebook, host-b, netmux-secondaries ]" in b and "host-c" not in b
    assert "acl: [ phonebook, host-c, netmux-secondaries ]" in c and "host-b" not in c
    acl_b = text.split("  - id: host-b\n    key: host-b\n")[1].split("  - id:")[0]
    assert "update-owner: zone" in acl_b and "update-type: [ A, AAAA, TXT ]" in acl_b
    assert f"  - domain: {CAT}.\n    catalog-role: generate\n" in zones
    assert zones.count(f"catalog-zone: {CAT}.") == 2
    assert zones.count("notify: netmux-secondaries") == 3
    assert '"2001:db8:5::53@53"' in text


@pytest.mark.unit
def test_a_primary_without_secondaries_has_no_remote_and_no_hosts_no_keys() -> None:
    text = hosts.render_primary_part([], CAT, Path("/h/zones"))
    sections = [line for line in text.splitlines() if line.endswith(":")]
    assert sections == ["zone:"]
    assert "catalog-role: generate" in text
    with pytest.raises(UsageError, match="twice"):
        hosts.render_primary_part(joined() + joined()[:1], CAT, Path("/h"))
    with pytest.raises(UsageError, match="secondary TSIG key"):
        hosts.render_primary_part([], CAT, Path("/h"), [SEC])


@pytest.mark.unit
def test_knot_conf_of_a_primary_includes_the_part_and_lists_its_own_zone(tmp_path: Path) -> None:
    cfg = parse_host('[dns]\nhostname = "a"\ndomain = "example.org"\n')
    site = knot.KnotSite(
        Zones.from_config(cfg),
        tmp_path,
        ["::"],
        include=tmp_path / "hosts.conf",
        public_extra=hosts.own_zone_lines(CAT, [SEC]),
    )
    conf = knot.render_knot_conf(site)
    head, zones = conf.rsplit("zone:\n", 1)
    assert f'include: "{tmp_path}/hosts.conf"' in head.split("template:")[1]
    own = zones.split("  - domain: a.example.org.\n")[1].split("  - domain:")[0]
    assert f"catalog-zone: {CAT}." in own and "notify: netmux-secondaries" in own
    internal = zones.split("  - domain: internal.\n")[1].split("  - domain:")[0]
    assert "catalog" not in internal  # host-local zones never reach the secondary
    plain = knot.KnotSite(Zones.from_config(cfg), tmp_path, ["::"])
    assert "hosts.conf" not in knot.render_knot_conf(plain)


@pytest.mark.unit
def test_the_secondary_interprets_the_catalog_from_the_primary(tmp_path: Path) -> None:
    conf = hosts.render_secondary_conf(tmp_path, ["::@53"], "2001:db8:a::53", CAT, KEY_S)
    assert 'address: "2001:db8:a::53@53"' in conf
    assert f"  - domain: {CAT}.\n    master: primary\n" in conf
    assert "catalog-role: interpret\n    catalog-template: netmux-member" in conf
    with pytest.raises(UsageError, match="not an IP address"):
        hosts.render_secondary_conf(tmp_path, ["::"], "vps.example.org", CAT, KEY_S)


@pytest.mark.unit
def test_lease_text_round_trips_and_junk_is_no_lease() -> None:
    text = hosts.lease_text(1_800_000_000.7, 120)
    assert hosts.parse_lease(f'"{text}"') == hosts.Lease(1_800_000_000, 120)
    for junk in ('"v=spf1 -all"', "netmux-lease t=x lease=1", "", '"netmux-lease t=1"'):
        assert hosts.parse_lease(junk) is None
    assert hosts.refresh_interval(120) == 30


@pytest.mark.unit
def test_a_lease_lapses_after_the_shorter_of_its_own_and_the_primarys_limit() -> None:
    lease = hosts.Lease(1000, 120)
    assert not hosts.expired(lease, 1100, 300)
    assert hosts.expired(lease, 1121, 300)  # its own 120 s
    assert hosts.expired(lease, 1061, 60)  # the primary's 60 s
    assert hosts.expired(None, 1000, 300)  # records without any lease
    assert hosts.expired(lease, 1000 - 301, 300)  # a clock far in the future
    assert not hosts.expired(lease, 1000 - 5, 300)  # a little skew is fine


def rows(zone: str, stamp: int | None) -> list[hosts.Row]:
    out = [
        (zone, "SOA", f"dns.a.example.org. hostmaster.{zone}. 3 16384 2048 1048576 60"),
        (zone, "NS", "dns.a.example.org."),
        (f"www.{zone}", "AAAA", "2001:db8:b::80"),
        (f"www.{zone}", "AAAA", "2001:db8:b::81"),
        (f"dns.{zone}", "AAAA", "2001:db8:b::53"),
        (f"ssh.{zone}", "AAAA", "2001:db8:b:1::22"),
    ]
    if stamp is not None:
        out.append((f"_lease.{zone}", "TXT", f'"netmux-lease t={stamp} lease=60"'))
    return out


@pytest.mark.unit
def test_expiry_deletes_every_rrset_of_lapsed_zones_but_soa_and_ns() -> None:
    zones = {
        "b.example.org": rows("b.example.org", 900),
        "c.example.org": rows("c.example.org", 990),
    }
    plan = hosts.expiry_plan(zones, 1000, 300)
    assert list(plan) == ["b.example.org"]
    assert plan["b.example.org"] == [
        ("_lease.b.example.org", "TXT"),
        ("dns.b.example.org", "AAAA"),
        ("ssh.b.example.org", "AAAA"),
        ("www.b.example.org", "AAAA"),
    ]
    empty = {"b.example.org": rows("b.example.org", None)[:2]}
    assert hosts.expiry_plan(empty, 1000, 300) == {}  # nothing left to delete


@pytest.mark.unit
def test_host_list_counts_workloads_and_prefixes() -> None:
    r = rows("b.example.org", 990)
    assert hosts.workload_count("b.example.org", r) == 2  # www, ssh; not the name server
    assert hosts.prefixes_of(r) == [
        IPv6Network("2001:db8:b::/64"),
        IPv6Network("2001:db8:b:1::/64"),
    ]
    assert hosts.zone_lease("b.example.org", r) == hosts.Lease(990, 60)
    zones = {"b.example.org": r, "a.example.org": rows("a.example.org", None)}
    got = hosts.host_rows("a.example.org", zones, 1000, 300)
    assert [(h.host, h.state, h.last_refresh) for h in got] == [
        ("a", "primary", None),
        ("b", "up", 990),
    ]
    late = hosts.host_rows("a.example.org", zones, 1061, 300)
    assert late[1].state == "expired"


@pytest.mark.unit
def test_the_join_file_carries_primary_zone_and_key(tmp_path: Path) -> None:
    text = hosts.render_join("b", "b.example.org", "2001:db8:a::53", 53, CAT, KEY_B)
    info = hosts.parse_join(text, "b.join")
    assert (info.primary, info.port, info.zone, info.key) == (
        "2001:db8:a::53",
        53,
        "b.example.org",
        KEY_B,
    )
    with pytest.raises(ConfigError, match=r"b\.join: primary"):
        hosts.parse_join(render_tsig_key(KEY_B), "b.join")


@pytest.mark.unit
def test_member_zones_keep_internal_and_ula_reverse_local() -> None:
    cfg = parse_host('[dns]\nhostname = "b"\ndomain = "example.org"\n')
    z = Zones.from_config(cfg)
    m = hosts.MemberZones(z.public, z.internal, z.ttl, z.ns, ())
    assert m.all_zones() == ["b.example.org"]
    assert m.zone_of("www.b.example.org") == "b.example.org"
    assert m.zone_of("www.internal") is None


@pytest.mark.unit
def test_hosts_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"hosts\.role"):
        parse_host('[hosts]\nrole = "boss"\n')
    with pytest.raises(ConfigError, match=r"hosts\.lease"):
        parse_host("[hosts]\nlease = 0\n")
    cfg = parse_host('[hosts]\nrole = "member"\n')
    with pytest.raises(ConfigError, match=r"hosts\.primary"):
        hosts.make_sink(cfg, Zones.from_config(cfg))
    # Not joined yet: the sink waits for the key (this host's own DNS keeps working).
    cfg = parse_host('[hosts]\nrole = "member"\nprimary = "::1"\nkey = "/nonexistent/k"\n')
    sink = hosts.make_sink(cfg, Zones.from_config(cfg))
    assert sink is not None and sink.key_path == Path("/nonexistent/k")
    assert hosts.make_sink(parse_host(""), Zones.from_config(cfg)) is None


def netmux(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netmux.cli", "--config", str(cfg), *args],
        capture_output=True,
        text=True,
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("toml", "args", "message"),
    [
        ("", ["host", "add", "b", "--address", "2001:db8::1"], "hosts.role"),
        ('[hosts]\nrole = "primary"\n', ["host", "add", "B_", "--address", "::1"], "host name"),
        ('[hosts]\nrole = "primary"\n', ["host", "add", "b"], "both are needed"),
        ('[hosts]\nrole = "primary"\n', ["host", "add", "b", "--address", "no such!"], "--address"),
        ('[hosts]\nrole = "primary"\n', ["host", "remove", "zz"], "not joined"),
        ("", ["host", "join", "/nonexistent/b.join"], "cannot read"),
        ("", ["host", "leave"], "hosts.role"),
    ],
)
def test_bad_host_commands_exit_2_with_one_line(
    tmp_path: Path, toml: str, args: list[str], message: str
) -> None:
    cfg = tmp_path / "netmux.toml"
    toml = toml or '[dns]\nhostname = "b"\n'
    cfg.write_text(toml.replace("[hosts]\n", f'[hosts]\ndirectory = "{tmp_path}/h"\n'))
    r = netmux(cfg, *args)
    assert r.returncode == 2, r
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "h" / "keys").exists() or not list((tmp_path / "h" / "keys").iterdir())


@pytest.mark.unit
def test_the_resolver_asks_the_primary_for_peers_and_keeps_its_own_zone_local() -> None:
    from netmux.render import unbound

    member = parse_host(
        '[dns]\nhostname = "b"\ndomain = "example.org"\n[phonebook]\nserver = "fd64:cafe::5"\n'
        '[hosts]\nrole = "member"\nprimary = "2001:db8:a::53"\npeers = ["a", "b", "c"]\n'
    )
    got = {s.zone: s.addrs for s in unbound.stubs(member)}
    assert got["a.example.org."] == got["c.example.org."] == ("2001:db8:a::53",)
    assert got["b.example.org."] == ("fd64:cafe::5",)  # its own: the local Knot
    assert got["internal."] == ("fd64:cafe::5",)  # NAME.internal. stays host-local
    primary = parse_host(
        '[dns]\nhostname = "a"\ndomain = "example.org"\n[phonebook]\nserver = "fd64:cafe::5"\n'
        '[hosts]\nrole = "primary"\npeers = ["b"]\n'
    )
    assert {s.zone: s.addrs for s in unbound.stubs(primary)}["b.example.org."] == ("fd64:cafe::5",)
    alone = parse_host('[phonebook]\nserver = "fd64:cafe::5"\n[hosts]\npeers = ["b"]\n')
    assert "b.home.arpa." not in {s.zone for s in unbound.stubs(alone)}
    with pytest.raises(ConfigError, match=r"hosts\.peers"):
        parse_host('[hosts]\npeers = ["B B"]\n')


@pytest.mark.unit
def test_a_member_is_not_held_up_by_a_primary_that_is_down() -> None:
    """phonebookd's settle waits for every sink: the hosts sink must give up waiting (and
    keep retrying) when the primary cannot be reached, so workloads still start."""
    import asyncio
    import socket

    from netmux.phonebook.records import Record

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = parse_host('[dns]\nhostname = "b"\ndomain = "example.org"\n')

    async def scenario() -> tuple[str, int]:
        sink = hosts.HostSink(
            Zones.from_config(cfg), UpdateServer("127.0.0.1", port, KEY_B, 1.0), 120
        )
        sink.update([Record("www.b.example.org", "AAAA", "2001:db8:b::80", 60)])
        await asyncio.wait_for(sink.synced(), 10)
        err, failures = sink.last_error, sink.failures
        await sink.abandon()
        return err, failures

    err, failures = asyncio.run(scenario())
    assert failures >= 1 and err


@pytest.mark.unit
def test_every_zones_ns_set_follows_the_secondaries() -> None:
    zones = {
        "b.example.org": rows("b.example.org", 990),
        "c.example.org": [
            ("c.example.org", "NS", "dns.a.example.org."),
            ("c.example.org", "NS", "ns.vps.example."),
        ],
    }
    want = ["dns.a.example.org", "ns.vps.example"]
    assert hosts.ns_plan(zones, want) == ["b.example.org"]
    assert hosts.ns_plan(zones, want[:1]) == ["c.example.org"]
    text = hosts.ns_message("b.example.org", KEY_B, want, 60).to_text()
    assert (
        "b.example.org. 60 IN NS dns.a" in text
        and "b.example.org. 60 IN NS ns.vps.example." in text
    )
    with pytest.raises(ConfigError, match=r"hosts\.secondary_ns"):
        parse_host('[hosts]\nsecondary_ns = ["not a name"]\n')


@pytest.mark.unit
def test_doctor_says_what_a_member_or_primary_lacks() -> None:
    import re

    from netmux import doctor

    member = parse_host('[hosts]\nrole = "member"\nprimary = "2001:db8:a::d"\nlease = 120\n')
    primary = parse_host('[hosts]\nrole = "primary"\n')

    def check(f: doctor.HostsFact | None, cfg: object = member) -> tuple[str, str]:
        (c,) = doctor._hosts_checks(doctor.Facts(hosts=f), cfg)  # type: ignore[arg-type]
        return c.id, c.status

    assert check(doctor.HostsFact(key=False)) == ("hosts.key", "fail")
    assert check(doctor.HostsFact(error="timed out")) == ("hosts.lease", "fail")
    assert check(doctor.HostsFact()) == ("hosts.lease", "fail")  # no lease there
    assert check(doctor.HostsFact(lease_age=200)) == ("hosts.lease", "warn")
    assert check(doctor.HostsFact(lease_age=20)) == ("hosts.lease", "ok")
    assert check(doctor.HostsFact(key=False), primary) == ("hosts.primary", "fail")
    assert doctor._hosts_checks(doctor.Facts(), parse_host("")) == []
    text = (Path(__file__).parents[2] / "docs" / "troubleshooting.md").read_text()
    for cid in ("hosts.key", "hosts.lease", "hosts.primary"):
        assert f"| `{cid}` |" in text
    assert re.search(
        r"hosts\.lease",
        doctor.render_text(
            doctor.evaluate(doctor.Facts(hosts=doctor.HostsFact(lease_age=5)), member)
        ),
    )


@pytest.mark.unit
def test_a_primary_by_name_is_looked_up_by_the_member_and_by_its_resolver(tmp_path: Path) -> None:
    """A name instead of an address: the member follows the primary across renumberings."""
    import asyncio
    import socket

    from netmux import daemons
    from netmux.phonebook.records import Record
    from netmux.render import unbound

    toml = (
        '[dns]\nhostname = "b"\ndomain = "example.org"\n[phonebook]\nserver = "fd64:cafe::5"\n'
        '[hosts]\nrole = "member"\nprimary = "dns.a.example.org"\npeers = ["a"]\n'
    )
    cfg = parse_host(toml)
    stub = {s.zone: s for s in unbound.stubs(cfg)}["a.example.org."]
    assert (stub.addrs, stub.hosts) == ((), ("dns.a.example.org.",))
    conf = unbound.render(cfg, daemons.UnboundFeatures(), tmp_path)
    assert 'name: "a.example.org."\n  stub-host: dns.a.example.org.' in conf
    with pytest.raises(ConfigError, match=r"hosts\.primary"):
        parse_host('[hosts]\nprimary = "not a name!"\n')
    assert hosts.resolve("2001:db8::1") == "2001:db8::1"
    assert hosts.resolve("localhost") in ("::1", "127.0.0.1")
    with pytest.raises(StateError, match="cannot look up the primary"):
        hosts.resolve("nonexistent.invalid")

    with socket.socket() as s:  # the name resolves; nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> str:
        sink = hosts.HostSink(
            Zones.from_config(cfg), UpdateServer("localhost", port, KEY_B, 1.0), 120
        )
        assert sink.server == ""
        sink.update([Record("www.b.example.org", "AAAA", "2001:db8:b::80", 60)])
        await asyncio.wait_for(sink.synced(), 10)
        await sink.close()  # cannot reach it: logged, nothing raised
        return sink.server

    assert asyncio.run(scenario()) in ("::1", "127.0.0.1")


@pytest.mark.unit
@pytest.mark.parametrize("name", ["primary", "member"])
def test_the_recipe_examples_parse(name: str) -> None:
    path = Path(__file__).parents[2] / "recipes" / "hosts" / f"{name}.toml.example"
    assert parse_host(path.read_text(), str(path)).hosts.role == name
