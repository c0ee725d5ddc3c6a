"""The uplink for real: kea delegates a prefix to dhcpcd in mux, radvd advertises it,
NAT64 + DNS64 reach an IPv4-only web server, and a new delegation renumbers workloads.

One lab (router namespace with kea-dhcp6, radvd, udhcpd, busybox httpd, unbound; mux with
dhcpcd, radvd, tayga, nft) is shared by this module's tests; every object carries the run
prefix and the lab is taken down after the last test.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from netmux import config, doctor, lab, nat64, workload
from netmux.config import HostConfig
from netmux.lab import supervise, upstream
from tests.conftest import RUN

pytestmark = [
    pytest.mark.netns,
    pytest.mark.requires("kea-dhcp6", "dhcpcd", "radvd", "unbound", "busybox"),
]

NAT64 = IPv6Network("2001:db8:64::/96")


def lab_config(tmp: Path, tag: str) -> HostConfig:
    path = tmp / "netmux.toml"
    path.write_text(
        f'[mux]\nnetns = "{RUN}{tag}mx"\nuplinks = ["{RUN}{tag}u*"]\n'
        f'[lab]\nrouter_netns = "{RUN}{tag}rt"\nuplink = "{RUN}{tag}u0"\n'
        f'[nat64]\nprefix = "{NAT64}"\npool = "198.51.100.0/24"\n'
        f'[paths]\nstate_dir = "{tmp}/state"\nrun_dir = "{tmp}/run"\n'
        f'workloads_dir = "{tmp}/workloads"\n'
    )
    return config.load_host(path)


def teardown(host: HostConfig) -> None:
    for name in workload.known(host):
        workload.down(host, name)
    lab.down(host)


@pytest.fixture(scope="module")
def labhost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostConfig]:
    host = lab_config(tmp_path_factory.mktemp("uplink"), "p")
    try:
        lab.up(host)
        upstream.resolver_up(host, lab.daemon_dir(host))
        yield host
    finally:
        teardown(host)


def name(suffix: str) -> str:
    return f"{RUN}{secrets.token_hex(2)}{suffix}"


def global_addrs(netns: str, ifname: str = "eth0") -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "-6", "addr", "show", "dev", ifname, "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [a for link in json.loads(out) for a in link.get("addr_info", []) if "local" in a]


def in_prefix(addrs: list[dict[str, object]], prefix: IPv6Network) -> list[dict[str, object]]:
    return [a for a in addrs if IPv6Address(str(a["local"])) in prefix]


def test_pd_reaches_gateway_and_a_workload_gets_an_address_from_it(labhost: HostConfig) -> None:
    host = labhost
    run = lab.daemon_dir(host)
    # The prefix on gw0 came from kea through dhcpcd (not a static address of the lab).
    log = (run / "dhcpcd.log").read_text()
    assert f"delegated prefix {host.lab.prefix}" in log, log
    gw = in_prefix(global_addrs(host.mux.netns, host.mux.gateway), host.lab.prefix)
    assert gw and "dynamic" in json.dumps(gw), gw  # a lease, with lifetimes
    # radvd advertises it: a workload gets a stable-privacy address in it + default route.
    w = name("w")
    workload.up(host, config.workload_from(w), exec_cmd=False)
    try:
        st = workload.status(host, w)
        glob = [IPv6Address(a.split("/")[0]) for a in st["addresses"]["global"]]
        assert any(a in host.lab.prefix for a in glob), st
        assert st["default_route"]
        router = str(host.lab.router_address.ip)
        ping = subprocess.run(
            ["ip", "netns", "exec", w, "ping", "-6", "-c1", "-W2", router],
            capture_output=True,
            text=True,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        # the hook recorded the prefix (renumber state) and mux got IPv4 by DHCP
        state_file = run / "prefixes.json"  # written by the hook, just after the address
        deadline = time.monotonic() + 5
        while not state_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(state_file.read_text())["current"] == [str(host.lab.prefix)]
        argv = ["ip", "-n", host.mux.netns, "-4", "-j", "addr", "show", "dev", host.lab.uplink]
        deadline = time.monotonic() + 10
        v4 = subprocess.run(argv, capture_output=True, text=True).stdout
        while "192.0.2." not in v4 and time.monotonic() < deadline:
            time.sleep(0.1)
            v4 = subprocess.run(argv, capture_output=True, text=True).stdout
        assert "192.0.2." in v4, v4
    finally:
        workload.down(host, w)


def _dig(netns: str, qname: str, qtype: str) -> list[str]:
    r = subprocess.run(
        ["ip", "netns", "exec", netns, "dig", "+short", "+time=2", "+tries=3",
         f"@{config.ResolverConfig().address}", qname, qtype],
        capture_output=True, text=True,
    )  # fmt: skip
    return r.stdout.split()


@pytest.mark.requires("tayga")
def test_dns64_and_nat64_reach_an_ipv4_only_web_server(labhost: HostConfig) -> None:
    host = labhost
    run = lab.daemon_dir(host)
    upstream.wait_ipv4(host)  # NAT64 masquerades behind the uplink's DHCPv4 address
    w = name("c")
    workload.up(host, config.workload_from(w), exec_cmd=False)
    try:
        qname = f"v4only.{upstream.ZONE}"
        aaaa = _dig(w, qname, "AAAA")
        assert aaaa, f"no AAAA for {qname} from the resolver"
        synth = IPv6Address(aaaa[0])
        assert synth in NAT64 and synth.packed[-4:] == upstream.WEB4.packed
        assert _dig(w, qname, "A") == [str(upstream.WEB4)]
        r = subprocess.run(
            ["ip", "netns", "exec", w, "curl", "-sS", "-m", "10", "--resolve",
             f"{qname}:80:[{synth}]", f"http://{qname}/"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout == upstream.PAGE
        # it went through the engine netmux chose for this host
        if nat64.engine(host).name == "tayga":
            assert supervise.status("tayga", run) is not None
        else:
            assert doctor.probe_jool(host)
    finally:
        workload.down(host, w)


@pytest.mark.requires("tayga")
@pytest.mark.skipif(
    nat64.choose(nat64.probe()).name == "jool", reason="Jool is usable here: no fallback"
)
def test_where_jool_cannot_load_nat64_falls_back_to_tayga(labhost: HostConfig) -> None:
    """This machine's kernel cannot load modules: the choice is tayga, tayga is what runs
    in mux (no Jool instance), doctor and `netmux nat64 engine` say so, and a workload
    reaches the IPv4-only server through the prefix (ICMP echo: tayga translates it)."""
    from netmux import cli

    host = labhost
    eng = nat64.engine(host)
    assert eng.name == "tayga" and eng.reason.startswith("Jool is not usable: "), eng
    assert supervise.status("tayga", lab.daemon_dir(host)) is not None
    assert lab.processes_in(host.mux.netns, "tayga")  # tayga's process lives in mux
    checks = {c.id: c for c in doctor.evaluate(doctor.Facts(nat64=nat64.probe()), host)}
    assert checks["nat64.engine"].detail == f"NAT64 engine: tayga ({eng.reason})"
    assert cli.main(["--config", host.source, "nat64", "engine", "--is", "tayga"]) == 0
    assert cli.main(["--config", host.source, "nat64", "engine", "--is", "jool"]) == 1
    upstream.wait_ipv4(host)
    w = name("f")
    workload.up(host, config.workload_from(w), exec_cmd=False)
    try:
        dst = IPv6Address(int(NAT64.network_address) | int(upstream.WEB4))
        r = subprocess.run(["ip", "netns", "exec", w, "ping", "-c", "1", "-W", "5", str(dst)],
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        workload.down(host, w)


def test_new_delegation_renumbers_workloads_within_5s(labhost: HostConfig) -> None:
    host = labhost
    run = lab.daemon_dir(host)
    old = host.lab.prefix
    new = IPv6Network("2001:db8:0:2::/64")
    w = name("r")
    workload.up(host, config.workload_from(w), exec_cmd=False)
    try:
        assert in_prefix(global_addrs(w), old)
        t0 = time.monotonic()
        upstream.renumber(host, run, new)  # dhcpcd learns it at its next renewal (2 s)
        addrs: list[dict[str, object]] = []
        while time.monotonic() - t0 < 5:
            addrs = global_addrs(w)
            fresh = [a for a in in_prefix(addrs, new) if a.get("preferred_life_time", 0) != 0]
            stale = in_prefix(addrs, old)
            if fresh and stale and all(a.get("preferred_life_time") == 0 for a in stale):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"not renumbered within 5s: {addrs}")
        # logged with the prefix; radvd's config carries the old prefix as deprecated
        log = (run / "dhcpcd.log").read_text()
        assert f"prefix {new} on {host.mux.gateway}" in log
        assert f"prefix {old} left {host.mux.gateway}" in log
        radvd_conf = (run / "radvd.conf").read_text()
        assert f"prefix {old} {{" in radvd_conf and "AdvPreferredLifetime 0;" in radvd_conf
    finally:
        workload.down(host, w)
        upstream.renumber(host, run, old)  # leave the shared lab as it was
        upstream.wait_prefix(host, old)


def test_lab_up_down_five_times_leaves_nothing(tmp_path: Path) -> None:
    host = lab_config(tmp_path, "c")
    try:
        for _ in range(5):
            lab.up(host)
            assert supervise.status("dhcpcd", lab.daemon_dir(host)) is not None
            assert upstream.resolver_up(host, lab.daemon_dir(host))
            lab.down(host)
            assert not [n for n in Path("/run/netns").iterdir() if n.name.startswith(RUN + "c")]
            assert not lab.daemon_dir(host).exists() or not any(lab.daemon_dir(host).iterdir())
    finally:
        teardown(host)
