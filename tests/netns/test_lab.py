"""netmux lab: a real router namespace, a veth uplink adopted into mux, radvd, workloads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from netmux import config, lab, workload
from netmux.config import HostConfig
from netmux.errors import UsageError
from netmux.lab import supervise
from tests import labfix
from tests.conftest import RUN

pytestmark = pytest.mark.netns

lab_host = labfix.lab_host  # fixture

ROUTER = "2001:db8::1"


def _ping(netns: str, addr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-6", "-c", "1", "-W", "2", addr],
        capture_output=True,
        text=True,
    )


def test_workloads_get_lab_prefix_and_reach_router_and_each_other(
    lab_host: HostConfig, uname: Callable[[str], str]
) -> None:
    host = lab_host
    lab.up(host)
    a, b = uname("a"), uname("b")
    for n in (a, b):
        assert workload.up(host, config.workload_from(n), exec_cmd=False) == 0
    st = workload.status(host, a)
    glob = [IPv6Address(x.split("/")[0]) for x in st["addresses"]["global"]]
    assert any(x in host.lab.prefix for x in glob), st
    assert st["default_route"]
    r = _ping(a, ROUTER)
    assert r.returncode == 0, r.stdout + r.stderr
    # and back: the router reaches the workload through mux (the return route)
    r = _ping(host.lab.router_netns, str(glob[0]))
    assert r.returncode == 0, r.stdout + r.stderr
    # two workloads reach each other over host0 (macvlan bridge mode)
    addr_b = workload.status(host, b)["addresses"]["global"][0].split("/")[0]
    r = _ping(a, addr_b)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(
        subprocess.run(
            [sys.executable, "-m", "netmux.cli", "--config", host.source, "ls", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert sorted(r["name"] for r in rows) == sorted([a, b])
    assert workload.down(host, a)


def _objects(host: HostConfig) -> dict[str, object]:
    netns = sorted(n for n in os.listdir("/run/netns") if n.startswith(RUN))
    links = sorted(n for n in os.listdir("/sys/class/net") if n.startswith(RUN))
    run = lab.daemon_dir(host)
    files = sorted(p.name for p in run.iterdir()) if run.exists() else []
    return {"netns": netns, "links": links, "files": files}


def test_up_down_three_times_leaves_nothing(lab_host: HostConfig) -> None:
    host = lab_host
    before = _objects(host)
    for i in range(3):
        lab.up(host)
        if i == 0:
            lab.up(host)  # idempotent
        d = supervise.status("radvd", lab.daemon_dir(host))
        assert d is not None and d.netns == host.mux.netns
        assert set(_objects(host)["netns"]) >= {host.mux.netns, host.lab.router_netns}
        # the cable works (link-local: independent of how the prefix arrives)
        assert _ping(host.mux.netns, f"fe80::1%{host.lab.uplink}").returncode == 0
        lab.down(host)
        if i == 0:
            lab.down(host)  # idempotent
        assert not d.alive
        assert _objects(host) == before


def test_cli_up_down(lab_host: HostConfig) -> None:
    """Through the command line: radvd outlives `lab up` and is stopped by `lab down`."""
    host = lab_host
    cli = [sys.executable, "-m", "netmux.cli", "--config", host.source, "-q", "lab"]
    r = subprocess.run([*cli, "up"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = supervise.status("radvd", lab.daemon_dir(host))
    assert d is not None
    conf = (lab.daemon_dir(host) / "radvd.conf").read_text()
    assert f"interface {host.mux.gateway} {{" in conf
    r = subprocess.run([*cli, "down"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not d.alive
    assert not Path("/run/netns", host.mux.netns).exists()


def test_refuses_uplink_patterns_matching_other_links(
    lab_host: HostConfig, uname: Callable[[str], str]
) -> None:
    """A root-namespace link that matches mux.uplinks and is not the lab's stops `lab up`
    before anything is built (this is what keeps a host's eth0 out of a lab's mux)."""
    host = lab_host
    other = f"{RUN}uother"
    subprocess.run(["ip", "link", "add", other, "type", "veth", "peer", "name", uname("p")],
                   check=True)  # fmt: skip
    try:
        with pytest.raises(UsageError, match=f"match '{other}' in the root namespace"):
            lab.up(host)
        assert not Path("/run/netns", host.mux.netns).exists()
        assert not Path("/run/netns", host.lab.router_netns).exists()
    finally:
        subprocess.run(["ip", "link", "del", other], check=False)


def test_refuses_uplink_not_matching_patterns(tmp_config: Callable[..., Path]) -> None:
    host = config.load_host(tmp_config('[lab]\nuplink = "nomatch0"\n'))
    with pytest.raises(UsageError, match=r"lab\.uplink 'nomatch0' does not match mux\.uplinks"):
        lab.check(host)


def test_leaves_a_radvd_it_did_not_start_in_charge(lab_host: HostConfig, tmp_path: Path) -> None:
    """With systemd in charge (netmux-radvd.service), mux already has a radvd: keep it."""
    host = lab_host
    lab.up(host)
    ours = supervise.status("radvd", lab.daemon_dir(host))
    assert ours is not None
    supervise.stop("radvd", lab.daemon_dir(host))
    other_run = tmp_path / "unit"
    conf = lab.daemon_dir(host) / "radvd.conf"
    pidfile = other_run / "radvd.pid"
    argv = ["radvd", "--nodaemon", "-m", "stderr", "-C", str(conf), "-p", str(pidfile)]
    other = supervise.start("radvd", argv, host.mux.netns, other_run, pidfile=pidfile)
    try:
        lab.up(host)
        assert supervise.status("radvd", lab.daemon_dir(host)) is None
        assert other.pid in lab.processes_in(host.mux.netns, "radvd")
    finally:
        supervise.stop("radvd", other_run)


def test_up_repairs_a_lab_whose_router_namespace_vanished(lab_host: HostConfig) -> None:
    """Daemons of a lab whose namespaces are gone are stale: `lab up` starts afresh."""
    host = lab_host
    lab.up(host)
    subprocess.run(["ip", "netns", "del", host.lab.router_netns], check=True)
    lab.up(host)
    assert _ping(host.mux.netns, f"fe80::1%{host.lab.uplink}").returncode == 0
    # mux's route to the router's LAN comes from dhcpcd (the upstream's RA) once the
    # upstream runs: give it a moment
    for _ in range(3):
        r = _ping(host.mux.netns, ROUTER)
        if r.returncode == 0:
            break
    assert r.returncode == 0, r.stdout + r.stderr


def test_lab_and_mux_down_never_strand_workloads(
    lab_host: HostConfig, uname: Callable[[str], str]
) -> None:
    """With a workload up, `mux down` refuses and `lab down` keeps mux (saying so); the
    lab's daemons stop with mux; `mux down --force` takes the workload first."""
    host = lab_host
    cli = [sys.executable, "-m", "netmux.cli", "--config", host.source]
    r = subprocess.run([*cli, "-q", "lab", "up"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    w = uname("w")
    r = subprocess.run([*cli, "up", w], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cli, "mux", "down"], capture_output=True, text=True)
    assert r.returncode == 1 and w in r.stderr and "--force" in r.stderr, r.stderr
    radvd = supervise.status("radvd", lab.daemon_dir(host))
    assert radvd is not None and radvd.alive
    r = subprocess.run([*cli, "lab", "down"], capture_output=True, text=True)
    assert r.returncode == 1 and f"left mux {host.mux.netns} up for workloads {w}" in r.stderr
    assert not radvd.alive
    assert Path("/run/netns", host.mux.netns).exists()
    assert not Path("/run/netns", host.lab.router_netns).exists()
    assert workload.status(host, w)["state"] in ("up", "degraded")  # its link is intact
    r = subprocess.run([*cli, "-q", "lab", "up"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    radvd = supervise.status("radvd", lab.daemon_dir(host))
    assert radvd is not None and radvd.alive
    r = subprocess.run([*cli, "mux", "down", "--force"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not radvd.alive  # the lab's daemons went with their namespace
    assert not Path("/run/netns", host.mux.netns).exists()
    assert not Path("/run/netns", w).exists() and workload.known(host) == []
