"""radvd.conf rendering, and the real radvd accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from netmux.config import parse_host
from netmux.render import radvd

pytestmark = pytest.mark.unit


def test_default_config_advertises_gateway_prefixes_and_rdnss() -> None:
    text = radvd.render(parse_host(""))
    assert "interface gw0 {" in text
    assert "prefix ::/64 {" in text
    assert "RDNSS fd64:cafe::53 {" in text
    assert "nat64prefix" not in text


def test_pref64_only_where_supported() -> None:
    text = radvd.render(parse_host(""), radvd.RadvdFeatures(pref64=True))
    assert "nat64prefix 64:ff9b::/96 {" in text


@pytest.mark.requires("radvd")
def test_real_radvd_accepts_it(tmp_path: Path) -> None:
    conf = tmp_path / "radvd.conf"
    conf.write_text(radvd.render(parse_host('[mux]\ngateway = "gwx"\n')))
    r = subprocess.run(["radvd", "--configtest", "-C", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
