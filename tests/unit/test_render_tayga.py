"""tayga.conf rendering (pure); tayga itself runs in tests/netns/test_nat64.py."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest

from netmux.config import parse_host
from netmux.daemons import TaygaFeatures
from netmux.render import tayga

pytestmark = pytest.mark.unit

OLD = TaygaFeatures(class_e_pool=False)
NEW = TaygaFeatures(class_e_pool=True)


def _kv(text: str) -> dict[str, str]:
    return dict(
        line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def test_seed_pool_where_tayga_accepts_class_e() -> None:
    kv = _kv(tayga.render(parse_host(""), NEW, Path("/var/lib/x")))
    assert kv == {
        "tun-device": "nat64",
        "ipv4-addr": "240.0.0.0",
        "ipv6-addr": "fd64:cafe::64",
        "prefix": "64:ff9b::/96",
        "dynamic-pool": "240.0.0.0/4",
        "data-dir": "/var/lib/x",
    }


def test_fallback_pool_documented_where_class_e_is_refused() -> None:
    text = tayga.render(parse_host(""), OLD)
    kv = _kv(text)
    assert kv["dynamic-pool"] == "198.18.0.0/15" and kv["ipv4-addr"] == "198.18.0.1"
    assert "fallback_pool" in text and "240.0.0.0/4" in text  # says why
    assert kv["data-dir"] == "/var/lib/netmux/tayga"


def test_configured_pool_and_network_specific_prefix() -> None:
    cfg = parse_host(
        '[nat64]\nprefix = "2001:db8:64::/96"\npool = "198.51.100.0/24"\ntun = "nat64x"\n'
    )
    p = tayga.plan(cfg, OLD)
    assert (p.pool, p.ipv4_addr, p.fallback) == (
        IPv4Network("198.51.100.0/24"),
        IPv4Address("198.51.100.1"),
        False,
    )
    assert p.tun == "nat64x" and p.ipv6_addr == IPv6Address("fd64:cafe::64")
    assert _kv(tayga.render(cfg, OLD))["prefix"] == "2001:db8:64::/96"
