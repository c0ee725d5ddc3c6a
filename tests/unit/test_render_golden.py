"""Golden files for the renderers (netmux/render/*): each case's whole output is compared
with tests/golden/CASE, so any change to a rendered configuration shows in review as a diff
of the golden file. After an intended change, regenerate them and read the diff:

    NETMUX_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_render_golden.py
"""

from __future__ import annotations

import os
from collections.abc import Callable
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from netmux.config import HostConfig, parse_host
from netmux.daemons import TaygaFeatures, UnboundFeatures
from netmux.render import dhcpcd, nat, radvd, router_rules, tayga, unbound

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REGEN = os.environ.get("NETMUX_REGEN_GOLDEN") == "1"

HOST_TOML = """
[dns]
hostname = "box"
domain = "example.org"
[mux]
static_addresses = ["2001:db8:5::1/64"]
[nat64]
prefix = "2001:db8:64::/96"
"""


def host() -> HostConfig:
    return parse_host(HOST_TOML, source="/etc/netmux/netmux.toml")


LEASE = radvd.Lease(IPv6Network("2001:db8:1::/64"), 1800, 3600)
HOOK = ["/usr/bin/netmux", "renumber-hook"]
CASES: dict[str, Callable[[], str]] = {
    "radvd.conf": lambda: radvd.render(host()),
    "radvd-pref64-renumbered.conf": lambda: radvd.render(
        host(), radvd.RadvdFeatures(pref64=True), [IPv6Network("2001:db8:2::/64")], [LEASE]
    ),
    "dhcpcd.conf": lambda: dhcpcd.render(host(), ["eth0", "wlan0"], "/run/netmux/dhcpcd-hook"),
    "dhcpcd-hook": lambda: dhcpcd.render_hook(
        HOOK,
        "/etc/netmux/netmux.toml",
        "/run/netmux",
        "/run/netmux-radvd/radvd.conf",
        "/run/netmux-radvd/radvd.pid",
    ),
    "tayga.conf": lambda: tayga.render(host(), TaygaFeatures(), Path("/var/lib/netmux/tayga")),
    "tayga-class-e.conf": lambda: tayga.render(host(), TaygaFeatures(class_e_pool=True)),
    "nat.nft": lambda: nat.render(host(), TaygaFeatures()),
    "unbound.conf": lambda: unbound.render(host(), UnboundFeatures(), Path("/run/netmux")),
    "unbound-nat64-served.conf": lambda: unbound.render(
        host(), UnboundFeatures(do_nat64=True), None, [IPv6Network("2001:db8:1::/64")]
    ),
    **{
        f"router-rules.{style}": (
            lambda style=style: router_rules.render(
                style, static_prefixes=[IPv6Network("2001:db8:7::/64")]
            )
        )
        for style in router_rules.STYLES
    },
    "router-rules-match.nft": lambda: router_rules.render(
        "nft", IPv6Address("2001:db8:0:1::"), IPv6Address("ffff:ffff:0:ff::")
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_output_is_the_golden_file(case: str) -> None:
    text = CASES[case]()
    path = GOLDEN / case
    if REGEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: regenerate (NETMUX_REGEN_GOLDEN=1)"
    assert text == path.read_text(), f"{case} changed: regenerate and review the diff"


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(CASES)
