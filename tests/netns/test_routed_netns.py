"""Routed workloads (`link = "routed"`) with real parts: mux with radvd, a macvlan sibling,
an upstream namespace behind an uplink, and an attacker that is root in its workload.

On the shared macvlan segment such an attacker can be anyone: the control test shows a
macvlan workload forging mux's gateway (its MAC and link-local address) and giving a
neighbour its own prefix. A routed workload's only link-layer neighbour is mux's end of
its veth, where mux's filter drops router adverts, redirects, foreign MACs and sources.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import re
import secrets
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from netmux import firewall, ipmuxd, names, nsutil, routed, workload
from tests import fwtopo, muxfix, phonebookfix
from tests.conftest import RUN, Unprivileged, wait_for
from tests.muxfix import MuxEnv
from tests.netns import test_security_netns as sec

pytestmark = [pytest.mark.netns, pytest.mark.requires("radvd", "ping", "nft")]

env = muxfix.mux_radvd_module
lab = sec.lab  # mux with gw0, a macvlan victim, phonebookd and ipmuxd
wname = muxfix.wname
UPSTREAM_NET = "2001:db8:ff::"
UPSTREAM = f"{UPSTREAM_NET}2"
ROGUE_PREFIX = "2001:db8:bad::"


@dataclass
class Upstream:
    netns: str
    address: str


@pytest.fixture(scope="module")
def upstream(env: MuxEnv) -> Iterator[Upstream]:
    """A namespace behind an uplink of mux (RUN + 'u…', so the guard table treats it as
    one) with a route to the workloads' prefix through mux."""
    ns, link = f"{RUN}x{secrets.token_hex(2)}", f"{RUN}u{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        cmds = [
            ["ip", "-n", ns, "link", "add", "up0", "type", "veth", "peer", link,
             "netns", env.netns],
            ["ip", "-n", ns, "addr", "add", f"{UPSTREAM}/64", "dev", "up0", "nodad"],
            ["ip", "-n", env.netns, "addr", "add", f"{UPSTREAM_NET}1/64", "dev", link, "nodad"],
            ["ip", "-n", ns, "link", "set", "up0", "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", env.netns, "link", "set", link, "up"],
            ["ip", "-n", ns, "-6", "route", "add", muxfix.STATIC_PREFIX, "via", f"{UPSTREAM_NET}1"],
        ]  # fmt: skip
        for c in cmds:
            subprocess.run(c, check=True)
        yield Upstream(ns, UPSTREAM)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def ping(netns: str, dst: str) -> bool:
    """Reachable: one of three echo requests answered (the first may wait on neighbour
    discovery along the path, which a loaded machine can stretch past the 2 s wait)."""
    argv = ["ip", "netns", "exec", netns, "ping", "-6", "-c3", "-i0.2", "-W2", dst]
    return subprocess.run(argv, capture_output=True).returncode == 0


def addrs(env: MuxEnv, name: str) -> list[str]:
    st = workload.status(env.host, name)["addresses"]
    assert isinstance(st, dict)
    return [a.split("/")[0] for a in st["global"] + st["ula"]]


def default_routes(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-j", "-6", "route", "show", "default"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [r.get("gateway", "") for r in json.loads(out or "[]")]


def mux_leftovers(env: MuxEnv, name: str) -> list[str]:
    """What of a routed workload is still in mux: its veth end, proxies, table."""
    peer = names.mux_link_name(name)
    left = []
    shown = subprocess.run(["ip", "-n", env.netns, "link", "show", peer], capture_output=True)
    if shown.returncode == 0:
        left.append(f"link {peer}")
    proxies = subprocess.run(["ip", "-n", env.netns, "-6", "neigh", "show", "proxy"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    left += [f"proxy {line}" for line in proxies.splitlines() if line.strip()]
    tables = firewall.run_nft(env.netns, "list tables") or {}
    left += [f"table {t['table']['name']}" for t in tables.get("nftables", [])
             if "table" in t and t["table"]["name"] == firewall.routed_table(peer)]  # fmt: skip
    return left


def up(env: MuxEnv, name: str, *args: str) -> None:
    env.netmux("up", name, *args)


# --- crafted frames, as a root attacker sends them --------------------------------------


def _checksum(src: bytes, dst: bytes, icmp: bytes) -> int:
    data = src + dst + struct.pack("!I3xB", len(icmp), 58) + icmp
    data += b"\0" * (len(data) % 2)
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def forged_ra_frame(mac: str, lla: str, prefix: str) -> bytes:
    """An Ethernet frame carrying an RA to ff02::1 from `mac`/`lla` (mux's gateway's, when
    forged) with router lifetime 1800 and one SLAAC /64."""
    src, dst = ipaddress.IPv6Address(lla).packed, ipaddress.IPv6Address("ff02::1").packed
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    ra += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0)
    ra += ipaddress.IPv6Address(prefix).packed
    ra = ra[:2] + struct.pack("!H", _checksum(src, dst, ra)) + ra[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(ra), 58, 255) + src + dst
    eth = bytes.fromhex("333300000001") + bytes.fromhex(mac.replace(":", "")) + b"\x86\xdd"
    return eth + ip6 + ra


def send_frame(netns: str, ifname: str, frame: bytes) -> None:
    """One raw frame out of `ifname`, as root in `netns` (AF_PACKET: any MAC, any source)."""

    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((ifname, 0))
            s.send(frame)

    nsutil.run_in_netns(netns, send)


def drop_own_egress_guard(netns: str) -> None:
    """What root in a workload can do first: remove the guard in its own namespace."""
    firewall.run_nft(netns, f"delete table netdev {firewall.EGRESS_TABLE}")


def has_rogue(netns: str) -> bool:
    out = subprocess.run(["ip", "-n", netns, "-6", "addr"], capture_output=True, text=True).stdout
    return ROGUE_PREFIX.rstrip(":") in out


# --- tests ----------------------------------------------------------------------------------


def test_routed_workload_keeps_its_addresses_and_leaves_nothing(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    w = wname()
    up(env, w)
    slaac = addrs(env, w)
    assert len(slaac) == 2, slaac  # global + ULA, by SLAAC on the segment
    env.netmux("down", w)
    up(env, w, "--link", "routed")
    st = workload.status(env.host, w)
    assert st["state"] == "up" and st["link"] == "routed"
    assert addrs(env, w) == slaac  # links.stable_address is the kernel's own
    assert default_routes(w) == ["fe80::1"]
    assert len(mux_leftovers(env, w)) == 4  # veth end, 2 proxy entries, the filter
    env.netmux("down", w)
    assert mux_leftovers(env, w) == []


def test_half_built_routed_workload_is_repaired_and_removed(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    """A `netmux up` killed after mux's side was wired (phase building, its pid gone):
    the next `up` rebuilds it and `down` leaves nothing in mux."""
    w = wname()
    up(env, w, "--link", "routed")
    path = workload.state_path(env.host, w)
    st = json.loads(path.read_text())
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that has exited: the killed `up`
    st.update(phase="building", pid=gone.pid)
    path.write_text(json.dumps(st))
    assert workload.status(env.host, w)["state"] == "half-built"
    up(env, w, "--link", "routed")
    assert workload.status(env.host, w)["state"] == "up"
    env.netmux("down", w)
    assert mux_leftovers(env, w) == []


def test_routed_reaches_sibling_and_upstream_both_ways_and_keeps_its_firewall(
    env: MuxEnv, wname: Callable[[], str], upstream: Upstream
) -> None:
    r, s = wname(), wname()
    up(env, r, "--link", "routed", "--port", "tcp/80")
    up(env, s)
    ra, sa = env.global_address(r), env.global_address(s)
    assert ping(r, sa) and ping(s, ra)  # routed <-> macvlan sibling (proxy NDP on gw0)
    assert ping(r, upstream.address) and ping(upstream.netns, ra)  # <-> upstream via mux
    ula_r, ula_s = addrs(env, r)[1], addrs(env, s)[1]
    assert ping(s, ula_r) and ping(r, ula_s)
    listeners = fwtopo.listen_tcp(r, [80, 81])
    try:
        ports = fwtopo.scan_tcp(upstream.netns, None, ra, [80, 81])
        assert ports == {80: "open", 81: "filtered"}  # the workload's own table still rules
    finally:
        for sock in listeners:
            sock.close()


def test_macvlan_root_attacker_gives_its_neighbour_a_prefix(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    """The control: on the shared segment, root in a workload forges the gateway's MAC and
    link-local address, so the neighbour's RA guard takes the rogue RA."""
    attacker, victim = wname(), wname()
    up(env, attacker)
    up(env, victim)
    gw = firewall.gateway_identity(env.host)
    assert gw is not None
    drop_own_egress_guard(attacker)
    send_frame(attacker, "eth0", forged_ra_frame(gw[0], gw[1], ROGUE_PREFIX))
    wait_for(lambda: has_rogue(victim), timeout=5)


def test_root_in_a_routed_workload_reaches_no_neighbours_link(
    env: MuxEnv, wname: Callable[[], str], upstream: Upstream
) -> None:
    attacker, victim, routed_victim = wname(), wname(), wname()
    up(env, attacker, "--link", "routed")
    up(env, victim)
    up(env, routed_victim, "--link", "routed")
    own = env.global_address(attacker)
    stolen = env.global_address(victim)
    peer = names.mux_link_name(attacker)
    gw = firewall.gateway_identity(env.host)
    assert gw is not None
    drop_own_egress_guard(attacker)

    # 1. Router adverts: forged as the gateway, and plain from its own link-local.
    send_frame(attacker, "eth0", forged_ra_frame(gw[0], gw[1], ROGUE_PREFIX))
    fwtopo.send_ra(attacker, "eth0", ROGUE_PREFIX)
    # 2. Another workload's address, with nodad, and a datagram from it; then one from its
    #    own address on the same path: when that one arrives, the forged one would have.
    subprocess.run(["ip", "-n", attacker, "addr", "add", f"{stolen}/128", "dev", "eth0",
                    "nodad"], check=True)  # fmt: skip

    def listen() -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::", 9999))
        s.settimeout(5)
        return s

    sink = nsutil.run_in_netns(upstream.netns, listen)
    try:

        def send(src: str) -> None:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                s.bind((src, 0))
                s.sendto(src.encode(), (upstream.address, 9999))

        nsutil.run_in_netns(attacker, lambda: send(stolen))
        nsutil.run_in_netns(attacker, lambda: send(own))
        data, (src, *_) = sink.recvfrom(100)
        assert (data.decode(), src) == (own, own)  # the forged datagram never arrived
    finally:
        sink.close()
    # 3. A frame with another source MAC (the victim's).
    vmac = str(workload.status(env.host, victim)["mac"])
    send_frame(attacker, "eth0", forged_ra_frame(vmac, "fe80::bad", ROGUE_PREFIX))

    drops = wait_for(
        lambda: (
            (d := firewall.routed_drops(env.netns, peer)).get("router", 0) >= 1
            and d.get("source-mac", 0) >= 2
            and d.get("source-address", 0) >= 1
            and d
        ),
        timeout=5,
    )
    assert drops
    # Everything the attacker sent went to mux's filter (its only link), which dropped it:
    for n in (victim, routed_victim):
        assert not has_rogue(n)
        assert len(default_routes(n)) == 1
    # The stolen address still belongs to its owner.
    assert ping(upstream.netns, stolen)
    with contextlib.suppress(Exception):
        subprocess.run(["ip", "-n", attacker, "addr", "del", f"{stolen}/128", "dev", "eth0"])


def addr_info(netns: str) -> dict[str, dict[str, object]]:
    out = subprocess.run(["ip", "-n", netns, "-j", "-6", "addr", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return {a["local"]: a for link in json.loads(out) for a in link.get("addr_info", [])}


def test_routed_workload_follows_the_gateways_prefixes(
    env: MuxEnv, wname: Callable[[], str], upstream: Upstream
) -> None:
    """No RAs on a routed link: mux's watcher (routed.follow) gives the workload its
    address in a new prefix and deprecates the old one when it leaves the gateway."""
    w = wname()
    up(env, w, "--link", "routed")
    old = env.global_address(w)
    new_net = ipaddress.IPv6Network("2001:db8:0:2::/64")
    gw = ["ip", "-n", env.netns, "addr"]
    route = ["ip", "-n", upstream.netns, "-6", "route"]
    stop = threading.Event()
    follower = threading.Thread(target=routed.follow, args=(env.host, stop, 0.2))
    follower.start()
    try:
        subprocess.run([*gw, "add", "2001:db8:0:2::1/64", "dev", "gw0", "nodad"], check=True)
        subprocess.run([*route, "add", str(new_net), "via", f"{UPSTREAM_NET}1"], check=True)
        new = wait_for(
            lambda: next((a for a in addr_info(w) if ipaddress.ip_address(a) in new_net), None),
            timeout=10,
        )
        assert ping(upstream.netns, str(new))
        subprocess.run([*gw, "del", muxfix.STATIC_GW, "dev", "gw0"], check=True)
        wait_for(lambda: addr_info(w)[old].get("preferred_life_time") == 0, timeout=10)
        assert ping(upstream.netns, old)  # deprecated, still answered
        st = workload.read_state(env.host, w) or {}
        assert str(new) in st["routed"] and old in st["routed"]
    finally:
        stop.set()
        follower.join()
        subprocess.run([*gw, "add", muxfix.STATIC_GW, "dev", "gw0", "nodad"], check=False)
        subprocess.run([*gw, "del", "2001:db8:0:2::1/64", "dev", "gw0"], check=False)
        subprocess.run([*route, "del", str(new_net)], check=False)
    env.netmux("down", w)
    assert mux_leftovers(env, w) == []


stack = phonebookfix.stack


def test_routed_workload_is_published_while_it_runs(
    env: MuxEnv, wname: Callable[[], str], stack: phonebookfix.Stack
) -> None:
    """Through the real phonebookd and knotd, as `netmux up NAME -- CMD` publishes a
    macvlan workload: the /128s on its veth are its published addresses."""
    name = wname()
    penv = env.env()
    penv["DBUS_SYSTEM_BUS_ADDRESS"] = stack.bus
    p = subprocess.Popen(env.argv("up", name, "--link", "routed", "--", "sleep", "120"),
                         env=penv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:

        def execed() -> bool:
            assert p.poll() is None, p.communicate()
            with contextlib.suppress(OSError), open(f"/proc/{p.pid}/comm") as f:
                return f.read().strip() == "sleep"
            return False

        wait_for(execed, timeout=20)
        g, u = addrs(env, name)
        assert g in stack.dig(f"{name}.{phonebookfix.PUBLIC}").split()
        assert stack.dig(f"{name}.internal") == u
        p.kill()
        p.wait()
        stack.wait_dig(f"{name}.{phonebookfix.PUBLIC}", lambda a: a == "", timeout=5)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_random_kills_of_a_routed_workload_leave_nothing(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    """bench/crash.py's cycles (kills at uniformly random points of up + down, each
    finished by `down` or a repairing `up`) on a routed link: nothing left in mux either
    (veth end, proxy entries, its table)."""
    from bench import crash

    n = wname()
    res = crash.crash_cycles(env.host, n, 40, random.Random(RUN), link="routed")
    assert res.leaks == []
    assert res.killed > 5
    assert mux_leftovers(env, n) == []


# --- an ipmuxd member on a routed device ----------------------------------------------------


def test_ipmuxd_member_on_a_routed_device_reaches_no_neighbours_link(
    lab: tuple[phonebookfix.Stack, str, str], unprivileged: Unprivileged
) -> None:
    """`netmux ipmux --kind routed`: the member (root only in its own user namespace)
    gets a veth with its /128s and a default route; its forged router adverts stop at
    mux's end, the segment's victim still reaches it, and its close removes mux's side."""
    stack, mux, victim = lab
    forwarding = "net.ipv6.conf.all.forwarding=1"  # as `netmux mux up` sets it
    subprocess.run(["ip", "netns", "exec", mux, "sysctl", "-qw", forwarding], check=True)
    m = sec.Member(stack, "mbrr", unprivileged, kind="routed")
    peer = ipmuxd.routed_peer(sec.NOBODY, "mbrr")
    try:
        found = re.findall(r"inet6 (2001:db8:1:[0-9a-f:]+)/128", m.ip("-6", "addr"))
        assert len(found) == 1, m.ip("-6", "addr")
        assert "default via fe80::1" in m.ip("-6", "route")
        assert ping(victim, found[0])  # segment -> mux (proxy NDP on gw0) -> the member
        gw_mac, gw_lla = gateway_of(mux)
        for frame in (forged_ra_frame(gw_mac, gw_lla, ROGUE_PREFIX),):
            script = ("import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); "
                      f"s.bind(('eth0', 0)); s.send(bytes.fromhex('{frame.hex()}'))")  # fmt: skip
            assert m.do(f'sh python3 -c "{script}"').startswith("rc 0"), "member cannot send"
        assert m.do(f'sh python3 -c "{SEND_RA.format(prefix=ROGUE_PREFIX)}"').startswith("rc 0")
        wait_for(
            lambda: (
                (d := firewall.routed_drops(mux, peer)).get("source-mac", 0) >= 1
                and d.get("router", 0) >= 1
            ),
            timeout=5,
        )
        assert not has_rogue(victim)
        # Publication: phonebookd vouches for what mux routes to the veth, not for what
        # the member adds (DAD on a veth proves nothing): the victim's address with nodad,
        # another one of the prefix with DAD.
        for a in (f"{sec.VICTIM}/128 dev eth0 nodad", f"{sec.PREFIX}99/64 dev eth0"):
            assert m.do(f"sh ip addr add {a}") == "rc 0"
        wait_for(lambda: sec.settled(m), timeout=10)
        assert m.do("pub mbrr eth0").startswith(f"ok mbrr.{phonebookfix.PUBLIC}."), stack.log()
        stack.wait_dig(f"mbrr.{phonebookfix.PUBLIC}", sec.has(found[0]), timeout=10)
        assert stack.dig(f"mbrr.{phonebookfix.PUBLIC}") == found[0]
        ula = re.findall(r"inet6 (fd64:cafe::[0-9a-f:]+)/128", m.ip("-6", "addr"))
        assert stack.dig("mbrr.internal") == ula[0]
        # Renumbering: ipmuxd gives its routed devices their address in a new prefix (no
        # RAs on a veth), routed in mux first, and phonebookd follows mux's routes.
        subprocess.run(["ip", "-n", mux, "addr", "add", "2001:db8:2::1/64", "dev", "gw0",
                        "nodad"], check=True)  # fmt: skip

        def renumbered() -> list[str]:
            return re.findall(r"inet6 (2001:db8:2:[0-9a-f:]+)/128", m.ip("-6", "addr"))

        wait_for(renumbered, timeout=10)
        (new,) = renumbered()
        stack.wait_dig(f"mbrr.{phonebookfix.PUBLIC}", sec.has(new), timeout=10)
    finally:
        m.close()
    wait_for(lambda: not routed_side(mux, peer), timeout=10)


SEND_RA = (
    "import socket, struct, ipaddress; "
    "s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6); "
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255); "
    "ra = struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, 1800, 0, 0) "
    "+ struct.pack('!BBBBIII', 3, 4, 64, 0xC0, 86400, 14400, 0) "
    "+ ipaddress.IPv6Address('{prefix}').packed; "
    "s.sendto(ra, ('ff02::1', 0, 0, socket.if_nametoindex('eth0')))"
)


def gateway_of(mux: str) -> tuple[str, str]:
    out = json.loads(subprocess.run(["ip", "-n", mux, "-j", "addr", "show", "dev", "gw0"],
                                    capture_output=True, text=True, check=True).stdout)  # fmt: skip
    lla = next(a["local"] for a in out[0]["addr_info"] if a["local"].startswith("fe80:"))
    return out[0]["address"], lla


def routed_side(mux: str, peer: str) -> list[str]:
    """What of the routed device with mux end `peer` is still in mux."""
    left = []
    if subprocess.run(["ip", "-n", mux, "link", "show", peer], capture_output=True).returncode == 0:
        left.append(peer)
    proxies = subprocess.run(["ip", "-n", mux, "-6", "neigh", "show", "proxy"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    left += proxies.split("\n")
    tables = firewall.run_nft(mux, "list tables netdev") or {}
    left += [t["table"]["name"] for t in tables.get("nftables", []) if "table" in t]
    return [x for x in left if x.strip()]
