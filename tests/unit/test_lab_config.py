"""[lab] config section: documentation-range defaults, checked values (pure)."""

from __future__ import annotations

from ipaddress import IPv6Interface, IPv6Network
from pathlib import Path

import pytest

from netmux import lab
from netmux.config import parse_host
from netmux.errors import ConfigError, UsageError

pytestmark = pytest.mark.unit


def test_defaults_are_documentation_addresses() -> None:
    cfg = parse_host("").lab
    doc = IPv6Network("2001:db8::/32")
    assert cfg.prefix.subnet_of(doc) and cfg.prefix.prefixlen == 64
    assert cfg.router_address.ip in doc
    assert not cfg.router_address.network.overlaps(cfg.prefix)


def test_gateway_address_is_the_first_of_the_prefix() -> None:
    host = parse_host('[lab]\nprefix = "2001:db8:0:42::/64"\n')
    assert lab.gateway_address(host) == IPv6Interface("2001:db8:0:42::1/64")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[lab]\nprefix = "2001:db8::/48"\n', "lab.prefix"),
        ('[lab]\nuplink = "way-too-long-name0"\n', "lab.uplink"),
        ('[lab]\nrouter_address = "2001:db8::zz/64"\n', "lab.router_address"),
        ('[lab]\nrouter = "x"\n', "lab.router"),
    ],
)
def test_bad_values_name_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_host(toml, "lab.toml")


def test_check_refuses_overlapping_prefixes() -> None:
    host = parse_host(
        '[mux]\nuplinks = ["zzlab*"]\n'
        '[lab]\nuplink = "zzlab0"\nprefix = "2001:db8::/64"\nrouter_address = "2001:db8::1/64"\n'
    )
    with pytest.raises(UsageError, match="must not overlap"):
        lab.check(host)


def test_default_config_says_in_one_line_what_to_pass() -> None:
    """The first thing tried after the demo: `netmux lab up` with the host's own config."""
    with pytest.raises(UsageError) as e:
        lab.check(parse_host(""))
    msg = str(e.value)
    assert "\n" not in msg and "netmux --config " in msg and "demo.toml lab up" in msg
    demo = msg.split("netmux --config ")[1].split()[0]
    assert demo.endswith("demo.toml")
    hint_cfg = parse_host(Path(demo).read_text())
    assert lab.config.uplink_matches(hint_cfg.mux, hint_cfg.lab.uplink)
