"""unbound.conf rendering, and the real unbound-checkconf accepts it."""

from __future__ import annotations

import subprocess
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from netmux.config import parse_host
from netmux.daemons import UnboundFeatures
from netmux.render import unbound

pytestmark = pytest.mark.unit

OLD = UnboundFeatures(do_nat64=False)
NEW = UnboundFeatures(do_nat64=True)
LAB = """
[dns]
hostname = "box"
domain = "home.arpa"
[nat64]
prefix = "2001:db8:64::/96"
[phonebook]
server = "fd64:cafe::35"
[resolver]
stubs = ["lab.test=2001:db8::53"]
forwarders = ["2001:db8::53"]
"""


def test_dns64_at_the_well_known_address() -> None:
    text = unbound.render(parse_host(""), OLD, Path("/run/r"))
    assert "  interface: fd64:cafe::53\n" in text
    assert '  module-config: "dns64 validator iterator"\n' in text
    assert "  dns64-prefix: 64:ff9b::/96\n" in text
    assert "  access-control: fd64:cafe::/64 allow\n" in text
    assert '  pidfile: "/run/r/unbound.pid"\n' in text
    assert "do-nat64" not in text and "  do-ip4: no\n" in text
    assert "stub-zone" not in text  # no zone server known


def test_do_nat64_only_where_supported() -> None:
    text = unbound.render(parse_host(""), NEW)
    assert "  do-nat64: yes\n" in text and "  nat64-prefix: 64:ff9b::/96\n" in text
    assert "  do-ip4: yes\n" in text


def test_no_dns64_without_nat64() -> None:
    text = unbound.render(parse_host("[nat64]\nenabled = false\n"), NEW)
    assert "dns64" not in text and "nat64" not in text


def test_stub_zones_for_host_zones_and_lab_zone() -> None:
    text = unbound.render(parse_host(LAB), OLD, served=[IPv6Network("2001:db8:0:1::/64")])
    for zone in (
        "internal.",
        "box.home.arpa.",
        "0.0.0.0.0.0.0.0.e.f.a.c.4.6.d.f.ip6.arpa.",
        "lab.test.",
    ):
        assert f'  local-zone: "{zone}" transparent\n' in text, zone
        assert f'stub-zone:\n  name: "{zone}"\n' in text, zone
    assert text.count("stub-addr: fd64:cafe::35") == 3
    assert "stub-addr: 2001:db8::53" in text
    assert 'forward-zone:\n  name: "."\n  forward-addr: 2001:db8::53\n' in text
    assert "access-control: 2001:db8:0:1::/64 allow" in text


def test_zone_servers_override_phonebook_server() -> None:
    cfg = parse_host(
        '[phonebook]\nserver = "fd64:cafe::35"\n[resolver]\nzone_servers = ["fd64:cafe::36"]\n'
    )
    zs = unbound.stubs(cfg)
    assert zs and all(s.addrs == ("fd64:cafe::36",) for s in zs)


def test_reverse_zone() -> None:
    assert unbound.reverse_zone(IPv6Network("2001:db8::/32")) == "8.b.d.0.1.0.0.2.ip6.arpa."


@pytest.mark.requires("unbound-checkconf")
@pytest.mark.parametrize("toml", ["", LAB, "[nat64]\nenabled = false\n"])
def test_real_unbound_checkconf_accepts_it(tmp_path: Path, toml: str) -> None:
    from netmux import daemons

    conf = tmp_path / "unbound.conf"
    conf.write_text(unbound.render(parse_host(toml), daemons.unbound(), tmp_path))
    r = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
