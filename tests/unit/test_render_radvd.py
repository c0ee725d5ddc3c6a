"""radvd.conf rendering, lifetimes from the lease (RFC 9096), and the real radvd accepts it."""

from __future__ import annotations

import subprocess
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from netmux.config import parse_host
from netmux.render import radvd
from netmux.render.radvd import INFINITE, Advertised, Lease

pytestmark = pytest.mark.unit

P1 = IPv6Network("2001:db8:0:1::/64")
P2 = IPv6Network("2001:db8:0:2::/64")


def block(text: str, prefix: IPv6Network | str) -> str:
    """The lines of one `prefix` block."""
    start = text.index(f"  prefix {prefix} {{")
    return text[start : text.index("  };", start)]


def test_default_config_advertises_the_ula_and_rdnss() -> None:
    text = radvd.render(parse_host(""))
    assert "interface gw0 {" in text
    assert "AdvPreferredLifetime 14400;" in block(text, "fd64:cafe::/64")
    assert "RDNSS fd64:cafe::53 {" in text
    assert "prefix ::/64" not in text  # it would advertise a lease a second time
    assert "nat64prefix" not in text


def test_pref64_only_where_supported() -> None:
    text = radvd.render(parse_host(""), radvd.RadvdFeatures(pref64=True))
    assert "nat64prefix 64:ff9b::/96 {" in text


def test_a_long_lease_is_capped_at_the_rfc9096_limits_without_countdown() -> None:
    assert radvd.advertised(Lease(P1, 86400, 172800), 2700, 5400) == Advertised(
        P1, 2700, 5400, False
    )


def test_a_short_lease_is_advertised_as_it_remains_and_counted_down() -> None:
    assert radvd.advertised(Lease(P1, 40, 60), 2700, 5400) == Advertised(P1, 40, 60, True)
    # one lifetime within its cap is enough for radvd to count down (both, conservatively)
    assert radvd.advertised(Lease(P1, 1000, 9000), 2700, 5400).decrement
    # preferred never above valid, whatever the caps say
    assert radvd.advertised(Lease(P1, 9000, 9000), 8000, 100) == Advertised(P1, 100, 100, False)


def test_a_static_address_keeps_long_lifetimes() -> None:
    ad = radvd.advertised(Lease(P1, INFINITE, INFINITE), 2700, 5400)
    assert (ad.preferred, ad.valid, ad.decrement) == (14400, 86400, False)


def test_render_leases_deprecated_and_config_caps() -> None:
    cfg = parse_host("[uplink]\nra_preferred_limit = 600\nra_valid_limit = 1200\n")
    text = radvd.render(cfg, deprecated=[P1], leases=[Lease(P2, 7200, 14400)])
    new = block(text, P2)
    assert "AdvPreferredLifetime 600;" in new and "AdvValidLifetime 1200;" in new
    assert "DecrementLifetimes" not in new
    old = block(text, P1)
    assert "AdvPreferredLifetime 0;" in old and "AdvValidLifetime 0;" in old
    assert "AdvPreferredLifetime 14400;" in block(text, "fd64:cafe::/64")  # ULA: long


def test_static_addresses_are_advertised_once_with_long_lifetimes() -> None:
    cfg = parse_host('[mux]\nstatic_addresses = ["2001:db8:0:1::1/64"]\n')
    text = radvd.render(cfg, leases=[Lease(P1, INFINITE, INFINITE)])
    assert text.count(f"prefix {P1} {{") == 1
    assert "AdvValidLifetime 86400;" in block(text, P1)


def test_a_prefix_back_on_the_gateway_is_not_also_deprecated() -> None:
    text = radvd.render(parse_host(""), deprecated=[P1], leases=[Lease(P1, 100, 200)])
    assert text.count(f"prefix {P1} {{") == 1
    assert "AdvPreferredLifetime 100;" in block(text, P1)


@pytest.mark.parametrize("key", ["ra_preferred_limit", "ra_valid_limit"])
def test_limits_are_validated(key: str) -> None:
    from netmux.errors import ConfigError

    with pytest.raises(ConfigError, match=f"uplink.{key}"):
        parse_host(f"[uplink]\n{key} = 0\n")


@pytest.mark.requires("radvd")
def test_real_radvd_accepts_it(tmp_path: Path) -> None:
    conf = tmp_path / "radvd.conf"
    text = radvd.render(
        parse_host('[mux]\ngateway = "gwx"\n'),
        deprecated=[P1],
        leases=[Lease(P2, 40, 60), Lease(IPv6Network("2001:db8:0:3::/64"), 9000, 9000)],
    )
    assert "DecrementLifetimes on;" in text
    conf.write_text(text)
    r = subprocess.run(["radvd", "--configtest", "-C", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
