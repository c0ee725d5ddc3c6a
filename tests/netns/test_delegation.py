"""The parent's NS and glue follow the DNS workload's address: pure update plans, and a
real Knot serving the parent zone that receives them (RFC 2136 + TSIG)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux import delegation, nsutil
from netmux.config import parse_host
from netmux.errors import ConfigError
from netmux.phonebook.records import Record
from netmux.phonebook.sinks import TsigKey, render_tsig_key

HOST = '[dns]\nhostname = "box"\ndomain = "home.arpa"\n'
NS = "dns.box.home.arpa"
G1, G2 = "2001:db8:0:1::53", "2001:db8:0:2::53"


def aaaa(name: str, value: str) -> Record:
    return Record(name, "AAAA", value, 60)


@pytest.mark.unit
def test_plan_takes_the_dns_workloads_global_addresses_as_glue() -> None:
    cfg = parse_host(HOST + '[delegation]\nserver = "2001:db8::53"\n')
    p = delegation.plan(cfg, [aaaa(NS, G1), aaaa("www.box.home.arpa", G2)])
    assert (p.zone, p.child, p.ns, p.glue) == ("home.arpa", "box.home.arpa", NS, {G1})
    key = TsigKey("delegation", "hmac-sha256", b"k" * 32)
    text = delegation.message(p, key).to_text()
    # (to_text shows the NS target relative to the parent zone)
    assert "box.home.arpa. 300 IN NS dns.box\n" in text
    assert f"{NS}. 300 IN AAAA {G1}" in text
    gone = delegation.message(delegation.plan(cfg, []), key).to_text()
    assert f"{NS}. ANY AAAA" in gone and "IN AAAA" not in gone  # glue deleted, NS kept


@pytest.mark.unit
def test_a_parent_that_does_not_contain_the_host_zone_is_refused() -> None:
    cfg = parse_host(HOST + '[delegation]\nserver = "2001:db8::53"\nzone = "example.net"\n')
    with pytest.raises(ConfigError, match=r"delegation\.zone: 'example\.net'"):
        delegation.plan(cfg, [])


@pytest.mark.unit
def test_an_unreadable_key_names_its_key(tmp_path: Path) -> None:
    cfg = parse_host(
        HOST + f'[delegation]\nserver = "2001:db8::53"\ntsig_key = "{tmp_path}/none"\n'
    )
    with pytest.raises(ConfigError, match=r"delegation\.tsig_key"):
        delegation.make_sink(cfg)
    assert delegation.make_sink(parse_host(HOST)) is None


def dig(ns: str, *args: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "dig", "@::1", "+norec", "+time=1",
                        "+tries=2", *args], capture_output=True, text=True)  # fmt: skip
    return r.stdout


@pytest.mark.netns
@pytest.mark.requires("knotd", "dig")
def test_a_real_parent_gets_ns_and_glue_and_follows_a_renumbering(
    tmp_path: Path,
    netns: Callable[[str], str],
    procs: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """The sink starts before the parent answers (it retries until acknowledged), then
    the glue follows the workload's address from one prefix to the next."""
    ns = netns("pdns")
    key = TsigKey("delegation", "hmac-sha256", b"s" * 32)
    keyfile = tmp_path / "delegation.key"
    keyfile.write_text(render_tsig_key(key))
    d = tmp_path / "knot"
    for sub in ("zones", "db", "run"):
        (d / sub).mkdir(parents=True)
    (d / "knot.conf").write_text(
        delegation.parent_knot_conf("home.arpa", str(d), ["::1@53"], str(keyfile))
    )
    (d / "zones" / "home.arpa.zone").write_text(delegation.parent_zone_file("home.arpa", "::1"))
    cfg = parse_host(HOST + f'[delegation]\nserver = "::1"\ntsig_key = "{keyfile}"\n')

    async def scenario() -> None:
        sink = delegation.make_sink(cfg)
        assert sink is not None
        sink.update([aaaa(NS, G1)])
        await asyncio.sleep(0)  # the first attempt fails: nothing listens yet
        log = (tmp_path / "knot.log").open("wb")
        procs(["knotd", "-c", str(d / "knot.conf")], stdout=log, stderr=subprocess.STDOUT)
        await asyncio.wait_for(sink.flush(), 30)
        assert sink.sent is not None and sink.sent.glue == {G1}
        sink.update([aaaa(NS, G2)])
        await asyncio.wait_for(sink.flush(), 30)
        assert sink.sent.glue == {G2}
        await sink.close()

    nsutil.run_in_netns(ns, lambda: asyncio.run(scenario()))
    out = dig(ns, NS, "AAAA")
    assert f"box.home.arpa.\t\t300\tIN\tNS\t{NS}." in out, out  # a referral ...
    assert f"{NS}.\t300\tIN\tAAAA\t{G2}" in out, out  # ... with the new glue
    assert G1 not in out
