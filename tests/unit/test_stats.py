"""Stats formatting (pure) and sampling real workloads under a running mux."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netmux import stats

pytestmark = pytest.mark.unit

REP = {
    "workloads": [
        {
            "name": "web",
            "ifname": "eth0",
            "rx_bytes": 1500,
            "tx_bytes": 20,
            "rx_packets": 3,
            "tx_packets": 1,
            "rx_bytes_per_s": 100.0,
            "ports": {"tcp_80": {"packets": 2, "bytes": 120}},
        }
    ],
    "denylist": {"size": 3, "manual": 2, "auto": 1, "auto_denial_packets": 7},
}


def test_rates() -> None:
    a = stats.Sample("w", "eth0", 0, 0, 0, 0, t=10.0)
    b = stats.Sample("w", "eth0", 1000, 500, 10, 5, t=12.0)
    assert stats.rates(a, b) == {
        "rx_bytes_per_s": 500.0,
        "tx_bytes_per_s": 250.0,
        "rx_packets_per_s": 5.0,
        "tx_packets_per_s": 2.5,
    }
    assert stats.rates(b, b) == {}


def test_prometheus() -> None:
    text = stats.prometheus(REP)
    assert 'netmux_workload_rx_bytes_total{workload="web"} 1500' in text
    assert 'netmux_port_packets_total{workload="web",port="tcp_80"} 2' in text
    assert "netmux_denylist_size 3" in text
    assert "netmux_auto_denial_packets_total 7" in text
    assert "# TYPE netmux_denylist_size gauge" in text


def test_text() -> None:
    text = stats.text(REP)
    assert text.splitlines()[1].startswith("web")
    assert "1.5kB" in text
    assert "denylist: 3 (2 manual, 1 automatic)" in text
    assert "mux is not up" in stats.text({"workloads": [], "denylist": None})


def test_cli_without_workloads(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text(
        f'[mux]\nnetns = "nonexistent-mux"\n[paths]\nstate_dir = "{tmp_path}/s"\n'
        f'run_dir = "{tmp_path}/r"\n'
    )
    prom = tmp_path / "netmux.prom"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "netmux.cli",
            "--config",
            str(cfg),
            "stats",
            "--json",
            "--interval",
            "0",
            "--prometheus",
            str(prom),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert '"workloads": []' in r.stdout and '"denylist": null' in r.stdout
    assert prom.read_text().startswith("# TYPE")
