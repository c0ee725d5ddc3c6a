"""The firewall on the real path: `netmux lab` upstream, core's mux, `workload.up --port`."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from ipaddress import IPv6Network

import pytest

from netmux import config, denylist, firewall, lab, workload
from netmux.config import HostConfig
from tests import fwtopo, labfix

pytestmark = pytest.mark.netns

lab_host = labfix.lab_host  # fixture

ROUTER = "2001:db8::1"


def test_lab_scan_and_denylist(lab_host: HostConfig, uname: Callable[[str], str]) -> None:
    host = lab_host
    lab.up(host)
    # `mux up` (inside `lab up`) loaded the guard table.
    assert firewall.run_nft(host.mux.netns, f"list table inet {firewall.GUARD_TABLE}")
    name = uname("fw")
    wl = config.workload_from(name, overrides={"ports": ["tcp/80", "tcp/8443"]})
    assert workload.up(host, wl, exec_cmd=False) == 0
    addr = workload.status(host, name)["addresses"]["global"][0].split("/")[0]
    router = host.lab.router_netns
    fwtopo.warm_up(router, addr)
    socks = fwtopo.listen_tcp(name, [22, 80, 8080])
    try:
        result = fwtopo.scan_tcp(router, ROUTER, addr, range(1, 1025))
        result.update(fwtopo.scan_tcp(router, ROUTER, addr, [8080, 8443], timeout=2.0))
        assert sorted(p for p, v in result.items() if v == "open") == [80]
        assert result[8443] == "closed" and result[22] == result[8080] == "filtered"
        # The router's own address denied: no answer, from the workload or from mux.
        denylist.add(host, IPv6Network(f"{ROUTER}/128"))
        assert not fwtopo.tcp_ok(router, ROUTER, addr, 80, timeout=0.5)
        ping = ["ip", "netns", "exec", router, "ping", "-6", "-c1", "-W1", "-I", ROUTER, addr]
        assert subprocess.run(ping, capture_output=True).returncode != 0
        assert denylist.count(host) == 1
        assert denylist.remove(host, IPv6Network(f"{ROUTER}/128"))
        assert fwtopo.tcp_ok(router, ROUTER, addr, 80)
    finally:
        for s in socks:
            s.close()
