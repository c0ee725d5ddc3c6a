"""nftables NAT ruleset for mux (pure); loaded for real in tests/netns/test_nat64.py."""

from __future__ import annotations

import pytest

from netmux.config import parse_host
from netmux.daemons import TaygaFeatures
from netmux.render import nat

pytestmark = pytest.mark.unit


def test_masquerade_in_a_nat_chain_replacing_only_its_own_table() -> None:
    text = nat.render(parse_host(""), TaygaFeatures(class_e_pool=False))
    assert "type nat hook postrouting priority srcnat" in text
    assert "type filter" not in text  # the original design's chain type the kernel rejects
    assert 'ip saddr 198.18.0.0/15 oifname != "nat64" masquerade' in text
    assert text.index("delete table ip netmux_nat64") < text.index("table ip netmux_nat64 {")


def test_pool_follows_tayga_features() -> None:
    text = nat.render(parse_host(""), TaygaFeatures(class_e_pool=True))
    assert "ip saddr 240.0.0.0/4" in text
