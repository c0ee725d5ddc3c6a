"""Router-side rules: the original design's mask match, and RouterOS address lists from static
bindings."""

from __future__ import annotations

import subprocess
import sys
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from netmux.errors import UsageError
from netmux.render import router_rules
from tests.conftest import require

pytestmark = pytest.mark.unit


def test_nft_is_the_seed_rule() -> None:
    text = router_rules.render("nft")
    assert "ip6 daddr & e000:0:0:ff:: == 2000:0:0:1:: counter accept" in text


def test_ip6tables() -> None:
    text = router_rules.render("ip6tables")
    assert "ip6tables -A FORWARD -d 2000:0:0:1::/e000:0:0:ff:: -j ACCEPT" in text


def test_routeros_needs_static_prefixes() -> None:
    with pytest.raises(UsageError, match="cannot match an address mask"):
        router_rules.render("routeros")
    text = router_rules.render(
        "routeros",
        static_prefixes=[IPv6Network("2001:db8:0:1::/64"), IPv6Network("2001:db8:0:2::/64")],
    )
    assert 'add address=2001:db8:0:1::/64 list=svc_net1 comment="netmux static binding"' in text
    assert "add address=2001:db8:0:2::/64 list=svc_net1" in text
    assert "add chain=forward action=accept dst-address-list=svc_net1" in text
    assert "e000" not in text


def test_match_checked() -> None:
    v, m = router_rules.parse_match("2000:0:0:2::/e000:0:0:ff::")
    assert "== 2000:0:0:2::" in router_rules.render("nft", v, m)
    for bad in ("2000::", "x/y", "2000::/"):
        with pytest.raises(UsageError, match="--match"):
            router_rules.parse_match(bad)
    with pytest.raises(UsageError, match="outside the mask"):
        router_rules.render("nft", IPv6Address("2000:0:0:100::"), router_rules.SEED_MASK)


def test_nft_text_parses() -> None:
    """`nft -c` (in a throwaway user+net namespace) accepts the rule in a forward chain."""
    require("nft")
    text = (
        "table inet filter {\n\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n"
        + router_rules.render("nft")
    )
    r = subprocess.run(
        ["unshare", "-rn", "nft", "-c", "-f", "-"], input=text, capture_output=True, text=True
    )
    if r.returncode and "unshare" in r.stderr:
        pytest.skip(f"no user namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr


def test_text_from_args() -> None:
    import argparse

    from netmux import config

    host = config.parse_host('[mux]\nstatic_addresses = ["2001:db8:0:7::1/64"]\n')
    ns = argparse.Namespace(router_style="routeros", prefix=None, match=None)
    assert "address=2001:db8:0:7::/64" in router_rules.text_from_args(ns, host)
    ns = argparse.Namespace(router_style="routeros", prefix=["2001:db8:0:9::/64"], match=None)
    assert "address=2001:db8:0:9::/64" in router_rules.text_from_args(ns, host)
    ns = argparse.Namespace(router_style=None, prefix=None, match="2000:0:0:3::/e000:0:0:ff::")
    assert "== 2000:0:0:3::" in router_rules.text_from_args(ns, host)
    with pytest.raises(UsageError, match="--prefix"):
        router_rules.text_from_args(
            argparse.Namespace(router_style="routeros", prefix=["2001:db8::1/64"], match=None),
            host,
        )


def test_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('[mux]\nstatic_addresses = ["2001:db8:0:5::1/64"]\n')
    base = [sys.executable, "-m", "netmux.cli", "--config", str(cfg), "render", "router-rules"]
    r = subprocess.run([*base, "--routeros"], capture_output=True, text=True, check=True)
    assert "add address=2001:db8:0:5::/64 list=svc_net1" in r.stdout
    r = subprocess.run([*base, "--ip6tables"], capture_output=True, text=True, check=True)
    assert "-d 2000:0:0:1::/e000:0:0:ff:: -j ACCEPT" in r.stdout
    r = subprocess.run(base, capture_output=True, text=True, check=True)
    assert "ip6 daddr & e000:0:0:ff:: == 2000:0:0:1::" in r.stdout
    r = subprocess.run([*base, "--match", "bad"], capture_output=True, text=True)
    assert r.returncode == 2 and "--match 'bad' is not allowed" in r.stderr
