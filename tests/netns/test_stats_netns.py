"""A real workload (`netmux up --port`) under core's mux: its firewall and its stats."""

from __future__ import annotations

import json
import subprocess

import pytest

from netmux import firewall
from tests import muxfix
from tests.muxfix import MuxEnv

pytestmark = pytest.mark.netns

mux_radvd = muxfix.mux_radvd


def test_workload_firewall_and_stats(mux_radvd: MuxEnv) -> None:
    name = mux_radvd.name("s")
    mux_radvd.netmux("up", name, "--port", "tcp/80", "--port", "udp/53")
    rules = firewall.run_nft(name, "list table inet netmux_wl")
    text = json.dumps(rules)
    assert '"policy": "drop"' in text
    assert set(firewall.port_counters(name)) == {"tcp_80", "udp_53"}
    # RA guard and egress guard are on, and radvd's advertisements from gw0 still count.
    assert '"comment": "ra-guard"' in text
    assert firewall.egress_drops(name) == {"source-mac": 0, "vlan": 0, "router": 0,
                                           "dhcpv6-server": 0}  # fmt: skip
    addr = mux_radvd.global_address(name)
    r = subprocess.run(
        ["ip", "netns", "exec", mux_radvd.netns, "ping", "-6", "-c3", "-i0.05", "-W2", addr],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout
    out = mux_radvd.netmux("stats", "--json", "--interval", "0.2").stdout
    rep = json.loads(out)
    (row,) = [w for w in rep["workloads"] if w["name"] == name]
    assert row["rx_packets"] >= 3 and row["tx_packets"] >= 3
    assert "rx_bytes_per_s" in row
    assert set(row["ports"]) == {"tcp_80", "udp_53"}
    assert rep["denylist"]["size"] == 0
    top = mux_radvd.netmux("top", "--interval", "0.1", "--count", "2").stdout
    assert top.count("netmux top") == 2 and name in top
    mux_radvd.netmux("down", name)
