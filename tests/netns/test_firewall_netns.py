"""Firewall and denylist against real traffic from a simulated upstream (tests/fwtopo.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from netmux import denylist, firewall, nsutil
from netmux.errors import StateError, UsageError
from tests import fwtopo
from tests.conftest import wait_for

pytestmark = pytest.mark.netns

DECLARED = ["tcp/80", "tcp/443", "tcp/8000-8002"]


@pytest.fixture
def topo(netns: Callable[[str], str], tmp_path: Path) -> Callable[..., fwtopo.Topo]:
    def make(extra: str = "", ports: list[str] = DECLARED) -> fwtopo.Topo:
        up, mux, wl = netns("up"), netns("mux"), netns("wl")
        host = fwtopo.host_config(mux, tmp_path, extra)
        return fwtopo.build(up, mux, wl, host, ports)

    return make


def test_scan_finds_only_declared_ports(topo: Callable[..., fwtopo.Topo]) -> None:
    t = topo()
    listening = [22, 80, 8000, 8001, 8080, 9999]
    socks = fwtopo.listen_tcp(t.wl, listening)
    try:
        ports = sorted(set(range(1, 1025)) | set(listening) | {8002})
        result = fwtopo.scan_tcp(t.up, None, fwtopo.WL_ADDR, ports)
    finally:
        for s in socks:
            s.close()
    assert sorted(p for p, v in result.items() if v == "open") == [80, 8000, 8001]
    # Declared but nobody listening: the firewall lets the RST through.
    assert result[443] == "closed" and result[8002] == "closed"
    # Undeclared ports, listening or not, give no answer at all.
    assert result[22] == result[8080] == result[9999] == result[25] == "filtered"
    counters = firewall.port_counters(t.wl)
    assert counters["tcp_80"]["packets"] >= 1 and counters["tcp_443"]["packets"] >= 1
    assert set(counters) == {"tcp_80", "tcp_443", "tcp_8000_8002"}


def test_ping_and_neighbour_discovery_pass(topo: Callable[..., fwtopo.Topo]) -> None:
    t = topo()
    r = subprocess.run(
        ["ip", "netns", "exec", t.up, "ping", "-6", "-c1", "-W2", fwtopo.WL_ADDR],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_denylisted_prefix_gets_no_answer(topo: Callable[..., fwtopo.Topo]) -> None:
    t = topo()
    bad, good = fwtopo.source("c"), fwtopo.source("b")
    t.add_sources([bad, good])
    socks = fwtopo.listen_tcp(t.wl, [80])
    try:
        assert fwtopo.tcp_ok(t.up, bad, fwtopo.WL_ADDR, 80)
        denylist.add(t.host, IPv6Network("2001:db8:c::/48"))
        assert not fwtopo.tcp_ok(t.up, bad, fwtopo.WL_ADDR, 80, timeout=0.5)
        assert fwtopo.tcp_ok(t.up, good, fwtopo.WL_ADDR, 80)
        # mux itself is protected too (prerouting), not only the workloads.
        assert not fwtopo.tcp_ok(t.up, bad, fwtopo.GW, 22, timeout=0.3)
        assert denylist.remove(t.host, IPv6Network("2001:db8:c::/48"))
        assert fwtopo.tcp_ok(t.up, bad, fwtopo.WL_ADDR, 80)
    finally:
        for s in socks:
            s.close()


def test_deny_count_is_exact_and_persists(topo: Callable[..., fwtopo.Topo], tmp_path: Path) -> None:
    t = topo(extra="[deny]\nauto = false\n")
    assert denylist.count(t.host) == 0
    prefixes = [IPv6Network(f"2001:db8:{i:x}::/48") for i in range(0x100, 0x100 + 40)]
    prefixes.append(IPv6Network("2001:db8:ffff:1::7/128"))
    for i, p in enumerate(prefixes):
        denylist.add(t.host, p, timeout=3600 if i % 2 else None)
    denylist.add(t.host, prefixes[0])  # again: idempotent
    assert denylist.count(t.host) == len(prefixes)
    with pytest.raises(UsageError, match="overlaps 2001:db8:100::/48"):
        denylist.add(t.host, IPv6Network("2001:db8:100:5::/64"))
    assert denylist.count(t.host) == len(prefixes)
    assert denylist.remove(t.host, prefixes[1])
    assert not denylist.remove(t.host, prefixes[1])
    assert denylist.count(t.host) == len(prefixes) - 1
    listed = {str(d.prefix): d for d in denylist.entries(t.host)}
    assert listed["2001:db8:103::/48"].expires and listed["2001:db8:102::/48"].expires is None
    # A reload of the guard table (mux up again) keeps the manual entries.
    denylist.apply_guard(t.host)
    assert denylist.count(t.host) == len(prefixes) - 1
    # The CLI prints exactly one number.
    cfg = tmp_path / "cli.toml"
    cfg.write_text(
        f'[mux]\nnetns = "{t.mux}"\nuplinks = ["up*"]\n[paths]\n'
        f'state_dir = "{t.host.paths.state_dir}"\n[deny]\nauto = false\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "netmux.cli", "--config", str(cfg), "deny", "count"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == f"{len(prefixes) - 1}\n"
    log = subprocess.run(
        [sys.executable, "-m", "netmux.cli", "--config", str(cfg), "deny", "log"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert f"denylist size {len(prefixes) - 1} (0 automatic)" in log
    listed_cli = subprocess.run(
        [sys.executable, "-m", "netmux.cli", "--config", str(cfg), "deny", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(listed_cli)
    assert len(rows) == len(prefixes) - 1
    assert {"prefix": "2001:db8:ffff:1::7/128", "source": "manual", "expires": None} in rows


def test_deny_without_mux_is_a_clear_error(tmp_path: Path, uname: Callable[[str], str]) -> None:
    host = fwtopo.host_config(uname("nomux"), tmp_path)
    with pytest.raises(StateError, match="does not exist"):
        denylist.count(host)


def test_flood_is_denied_automatically(topo: Callable[..., fwtopo.Topo]) -> None:
    t = topo(extra="[deny]\nprefix_length = 48\nrate = 200\nburst = 100\ntimeout = 30\n")
    flooder, other = fwtopo.source("a", 1), fwtopo.source("b", 1)
    t.add_sources([flooder, other])
    socks = fwtopo.listen_tcp(t.wl, [80])
    try:
        assert fwtopo.tcp_ok(t.up, flooder, fwtopo.WL_ADDR, 80)
        # A fast transfer inside one connection is far above the rate, and is no flood.
        (server,) = fwtopo.listen_tcp(t.wl, [8000])
        socks.append(server)
        assert fwtopo.tcp_upload(t.up, other, fwtopo.WL_ADDR, server, 8 << 20) == 8 << 20
        assert fwtopo.auto_denied(t.host) == []
        t0 = time.monotonic()
        fwtopo.udp_flood(t.up, flooder, fwtopo.WL_ADDR, 9, count=3000)
        wait_for(lambda: fwtopo.auto_denied(t.host), timeout=20)
        print(f"\nflood -> denied in {time.monotonic() - t0:.3f}s (the budget: bench/firewall.py)")
        assert fwtopo.auto_denied(t.host) == ["2001:db8:a::/48"]
        # The whole /48 is denied, the other prefix is still served.
        assert not fwtopo.tcp_ok(t.up, flooder, fwtopo.WL_ADDR, 80, timeout=0.5)
        assert fwtopo.tcp_ok(t.up, other, fwtopo.WL_ADDR, 80)
        assert denylist.auto_denials(t.host) >= 1
        assert denylist.count(t.host) == 1
        # An operator can lift an automatic denial.
        assert denylist.remove(t.host, IPv6Network("2001:db8:a::/48"))
        assert fwtopo.tcp_ok(t.up, flooder, fwtopo.WL_ADDR, 80)
    finally:
        for s in socks:
            s.close()


def test_a_full_meter_does_not_switch_auto_deny_off(topo: Callable[..., fwtopo.Topo]) -> None:
    """One packet from each of 80,000 /64s (80 /48s, each under the /48 rate) fills the
    per-/64 meter; a flood from a new /64 is still denied."""
    t = topo(extra="[deny]\nrate = 200\nburst = 100\ntimeout = 30\n")
    fill = (f"2001:db8:{0x100 + h:x}:{lo:x}::1" for h in range(80) for lo in range(1000))
    assert fwtopo.raw_echo_replies(t.up, fill, fwtopo.WL_ADDR) > 65535
    out = firewall.run_nft(t.mux, f"list set {firewall.FAMILY} {firewall.GUARD_TABLE} rate")
    meter = next(i["set"] for i in out["nftables"] if "set" in i)
    assert len(meter.get("elem", [])) == 65535  # full: it cannot track a new source
    # (The fill's own untracked rest shared one bucket: most of it is denied already.)
    assert "2001:db8:ff00:1::/64" not in fwtopo.auto_denied(t.host)
    flooder = "2001:db8:ff00:1::1"
    fwtopo.raw_echo_replies(t.up, [flooder], fwtopo.WL_ADDR, each=3000)
    wait_for(lambda: "2001:db8:ff00:1::/64" in fwtopo.auto_denied(t.host), timeout=5)
    assert denylist.auto_denials(t.host) >= 1


def test_a_site_flooding_from_many_64s_is_denied_as_a_48(
    topo: Callable[..., fwtopo.Topo],
) -> None:
    """Each /64 stays under its rate; together the /48 is over the aggregate rate."""
    t = topo(extra="[deny]\nrate = 200\nburst = 100\naggregate_rate = 500\ntimeout = 30\n")
    spread = [f"2001:db8:c:{lo:x}::1" for lo in range(100)]
    fwtopo.raw_echo_replies(t.up, spread, fwtopo.WL_ADDR, each=20)  # 2000 packets, 20 each
    wait_for(lambda: "2001:db8:c::/48" in fwtopo.auto_denied(t.host), timeout=5)
    assert not any(p.endswith("/64") for p in fwtopo.auto_denied(t.host))
    assert denylist.remove(t.host, IPv6Network("2001:db8:c::/48"))
    assert fwtopo.auto_denied(t.host) == []


def test_ra_guard_takes_router_adverts_only_from_the_gateway(
    topo: Callable[..., fwtopo.Topo], netns: Callable[[str], str]
) -> None:
    """A second workload on the same segment advertises itself as router with a prefix of
    its choosing: the victim's table drops it; the gateway's advertisement still counts."""
    t = topo()
    rogue = netns("rg")
    fwtopo.ip("-n", t.mux, "link", "add", "rg0", "link", "host0", "type", "macvlan", "mode",
              "bridge")  # fmt: skip
    fwtopo.ip("-n", t.mux, "link", "set", "rg0", "netns", rogue)
    nsutil.write_sysctls(rogue, [("net.ipv6.conf.rg0.accept_dad", "0")])
    fwtopo.ip("-n", rogue, "link", "set", "rg0", "up")

    def ra_routes() -> str:
        return subprocess.run(["ip", "-n", t.wl, "-6", "route", "show", "proto", "ra"],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    gw_lla = firewall.gateway_identity(t.host)
    assert gw_lla is not None
    fwtopo.send_ra(t.mux, "gw0", "2001:db8:1::")
    wait_for(lambda: f"via {gw_lla[1]}" in ra_routes(), timeout=5)
    wait_for(lambda: fwtopo.link_local(rogue, "rg0"), timeout=5)
    fwtopo.send_ra(rogue, "rg0", "2001:db8:bad::")
    wait_for(lambda: firewall.ra_guard_drops(t.wl) >= 1, timeout=5)
    assert ra_routes().count("via") == 1, ra_routes()
    addrs = subprocess.run(["ip", "-n", t.wl, "-6", "addr"], capture_output=True, text=True)
    assert "2001:db8:bad:" not in addrs.stdout


def _frame(src_mac: str, payload_type: int) -> bytes:
    """An Ethernet frame to all nodes (ff02::1) from fe80::bad: a router advertisement
    (134) with router lifetime 1800 or an echo request (128), checksums right."""
    import ipaddress
    import struct

    src = ipaddress.IPv6Address("fe80::bad").packed
    dst = ipaddress.IPv6Address("ff02::1").packed
    if payload_type == 134:
        body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    else:
        body = struct.pack("!BBHHH", 128, 0, 0, 1, 1)
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58) + body
    total = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    body = body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + dst
    eth = bytes.fromhex("333300000001") + bytes.fromhex(src_mac.replace(":", "")) + b"\x86\xdd"
    return eth + ip6 + body


def test_vm_guest_cannot_send_router_adverts_or_foreign_macs(
    topo: Callable[..., fwtopo.Topo], netns: Callable[[str], str]
) -> None:
    """What a guest writes into its macvtap passes the egress guard first: a forged RA
    and a foreign source MAC stop there, before a sibling (with no firewall) sees them."""
    from netmux import tap as taps

    t = topo()
    vm, victim = netns("vm"), netns("vc")
    mac = "02:00:00:00:0b:01"
    fwtopo.ip("-n", t.mux, "link", "add", "vt0", "link", "host0", "address", mac, "type",
              "macvtap", "mode", "bridge")  # fmt: skip
    fwtopo.ip("-n", t.mux, "link", "set", "vt0", "netns", vm)
    fwtopo.ip("-n", t.mux, "link", "add", "vc0", "link", "host0", "type", "macvlan", "mode",
              "bridge")  # fmt: skip
    fwtopo.ip("-n", t.mux, "link", "set", "vc0", "netns", victim)
    nsutil.write_sysctls(vm, [("net.ipv6.conf.vt0.disable_ipv6", "1")])
    nsutil.write_sysctls(victim, [("net.ipv6.conf.vc0.accept_dad", "0")])
    firewall.apply_egress(t.host, vm, "vt0", mac)
    fwtopo.ip("-n", vm, "link", "set", "vt0", "up")
    fwtopo.ip("-n", victim, "link", "set", "vc0", "up")
    tap = taps.open_tap(vm, "vt0", "test vm", inheritable=False)
    vnet = bytes(10)  # the virtio-net header a macvtap expects before each frame
    try:
        os.write(tap, vnet + _frame(mac, 134))  # its own MAC, but a router advertisement
        os.write(tap, vnet + _frame("02:00:00:00:0b:02", 128))  # a neighbour's MAC
        os.write(tap, vnet + _frame(mac, 128))  # allowed: its own MAC, an echo request
    finally:
        os.close(tap)
    wait_for(lambda: firewall.egress_drops(vm).get("source-mac", 0) >= 1, timeout=5)
    drops = firewall.egress_drops(vm)
    assert drops["router"] == 1 and drops["source-mac"] == 1, drops
    routes = subprocess.run(["ip", "-n", victim, "-6", "route", "show", "proto", "ra"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert routes == ""
