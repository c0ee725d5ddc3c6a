"""netmux doctor against a real mux + radvd + static prefix (tests/muxfix.py): the probes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux import config, doctor, lab, nsutil
from tests import muxfix
from tests.conftest import RUN, require
from tests.muxfix import MuxEnv

pytestmark = pytest.mark.netns

mux_radvd_module = muxfix.mux_radvd_module


def by_id(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.id: c for c in checks}


def test_kernel_probe_matches_this_kernel() -> None:
    kinds = doctor.probe_kinds()
    assert set(kinds) == set(doctor.KINDS)
    assert kinds["macvlan"] and kinds["veth"]  # what netmux cannot do without
    # The same answers as iproute2 in a throwaway namespace (this kernel: no dummy, no
    # ipvlan, docs/platform.md); neither probe leaves anything behind.
    for kind, extra in (("dummy", ""), ("bridge", ""), ("ipvlan", "link p0"),
                        ("macvtap", "link p0")):  # fmt: skip
        script = f"ip link add p0 type veth peer name p1 && ip link add t0 {extra} type {kind}"
        r = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True)
        assert kinds[kind] == (r.returncode == 0), (kind, r.stderr)


def test_probes_see_a_healthy_static_mux(mux_radvd_module: MuxEnv) -> None:
    env = mux_radvd_module
    facts = doctor.gather(env.host)
    assert facts.mux_exists and facts.forwarding == "1"
    assert facts.parent is not None and facts.parent.up
    assert muxfix.STATIC_GW in facts.gateway_addresses
    assert facts.ra is not None, facts.ra_error
    assert muxfix.STATIC_PREFIX in facts.ra.prefixes and "fd64:cafe::/64" in facts.ra.prefixes
    assert facts.ra.router.startswith("fe80:") and facts.ra.lifetime > 0
    assert env.radvd is not None and env.radvd.pid in facts.daemons["radvd"]

    checks = by_id(doctor.evaluate(facts, env.host))
    for cid in ("kernel.macvlan", "mux.namespace", "mux.links", "mux.forwarding", "mux.prefix",
                "mux.ula", "ra", "daemons.radvd"):  # fmt: skip
        assert checks[cid].status == "ok", checks[cid]
    assert checks["daemons.dhcpcd"].status == "info"  # static prefix: not needed
    assert checks["pd"].status == "info"
    # No resolver runs in this mux: DNS fails, with the way to fix it.
    assert checks["dns.internal"].status == "fail"
    assert "netmux@resolver" in checks["dns.internal"].fix


def test_cli_json_and_exit_status(mux_radvd_module: MuxEnv) -> None:
    r = mux_radvd_module.netmux("doctor", "--json", check=False, timeout=60)
    data = json.loads(r.stdout)
    assert r.returncode == 1 and data["ok"] is False  # DNS and tayga are not there
    statuses = {c["id"]: c["status"] for c in data["checks"]}
    assert statuses["ra"] == "ok" and statuses["mux.forwarding"] == "ok"
    text = mux_radvd_module.netmux("doctor", check=False, timeout=60)
    assert "fix: " in text.stdout and text.stdout.rstrip().endswith("warning(s)")


def test_forwarding_off_and_radvd_gone_are_found(mux_radvd_module: MuxEnv) -> None:
    """Last in the module: it breaks the shared mux (teardown copes)."""
    env = mux_radvd_module
    key = "net.ipv6.conf.all.forwarding"
    nsutil.write_sysctls(env.netns, [(key, "0")])
    try:
        assert env.radvd is not None
        muxfix.stop(env.radvd)
        checks = by_id(doctor.evaluate(doctor.gather(env.host, ra_timeout=1.0), env.host))
    finally:
        nsutil.write_sysctls(env.netns, [(key, "1")])
    assert checks["mux.forwarding"].status == "fail"
    assert checks["ra"].status == "fail"
    assert checks["daemons.radvd"].status == "fail"
    assert "netmux-radvd" in checks["ra"].fix
    assert os.path.exists(f"/run/netns/{env.netns}")  # the probes changed nothing


def test_pd_lease_from_a_real_dhcpcd_in_the_lab(
    tmp_config: Callable[..., Path], uname: Callable[[str], str]
) -> None:
    """`netmux lab up` (kea delegates a prefix to dhcpcd in mux): doctor reads dhcpcd's
    real lease file and reports the delegated prefix and its age."""
    require("kea-dhcp6", "dhcpcd", "radvd", "unbound", "busybox")
    path = tmp_config(f'[lab]\nrouter_netns = "{uname("rt")}"\nuplink = "{RUN}udoc"\n')
    host = config.load_host(path)
    try:
        lab.up(host)
        leases = doctor.probe_leases(host)
        assert leases, "no dhcpcd lease file found"
        (lease,) = leases
        assert lease.prefixes and 0 <= lease.age < 60 and 0 < lease.t1 <= lease.t2
        checks = by_id(doctor.evaluate(doctor.gather(host), host))
    finally:
        lab.down(host)
    assert checks["pd"].status == "ok", checks["pd"]
    assert lease.prefixes[0][0] in checks["pd"].detail
    assert checks["daemons.dhcpcd"].status == "ok" and checks["mux.prefix"].status == "ok"
