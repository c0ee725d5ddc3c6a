"""A small simulated internet for firewall tests and bench/firewall.py.

    upstream netns (lan0: 2001:db8:ffff::2, source addresses in 2001:db8:a::/48, :b::, ...)
        | veth
    mux netns (up0: uplink, matches uplinks = ["up*"]; host0 veth pair; gw0 macvlan
        |      2001:db8:1::1/64; forwarding on; guard table)
    workload netns (eth0: macvlan on host0, 2001:db8:1::100/64, its own firewall)

Addresses are nodad so nothing waits for DAD; every name comes from the caller (run
prefix). Sockets are opened by threads that entered a namespace (nsutil.run_in_netns):
they stay in that namespace, so traffic never leaves the test's namespaces.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from netmux import config, denylist, firewall, nsutil

PREFIX = "2001:db8:1::"
GW = "2001:db8:1::1"
WL_ADDR = "2001:db8:1::100"
UP_ADDR = "2001:db8:ffff::2"
MUX_UP_ADDR = "2001:db8:ffff::1"


def source(label: str, n: int = 1) -> str:
    """An upstream source address in prefix 2001:db8:LABEL::/48 (label a-f hex)."""
    return f"2001:db8:{label}::{n:x}"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Topo:
    up: str
    mux: str
    wl: str
    host: config.HostConfig

    def add_sources(self, addrs: Iterable[str]) -> None:
        """Source addresses on the upstream's lo, bindable when this returns: the kernel
        clears an address's tentative flag in a work item, late on a loaded machine."""
        for a in addrs:
            ip("-n", self.up, "addr", "add", f"{a}/128", "dev", "lo", "nodad")
        deadline = time.monotonic() + 10
        while subprocess.run(
            ["ip", "-n", self.up, "-6", "-o", "addr", "show", "dev", "lo", "tentative"],
            capture_output=True, text=True, check=True,
        ).stdout.strip():  # fmt: skip
            assert time.monotonic() < deadline, "source addresses still tentative after 10 s"
            time.sleep(0.01)


def host_config(mux: str, state_dir: Path, extra: str = "") -> config.HostConfig:
    return config.parse_host(
        f'[mux]\nnetns = "{mux}"\nuplinks = ["up*"]\n'
        f'[paths]\nstate_dir = "{state_dir}/state"\nrun_dir = "{state_dir}/run"\n'
        f'workloads_dir = "{state_dir}/wl"\n' + extra
    )


def build(up: str, mux: str, wl: str, host: config.HostConfig, ports: list[str]) -> Topo:
    """Wire the three (already created) namespaces; the workload's firewall goes on first."""
    for ns in (up, mux, wl):  # no DAD anywhere: link-locals usable at once (test-only nets)
        nsutil.write_sysctls(
            ns,
            [("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")],
        )
    ip("-n", mux, "link", "add", "up0", "type", "veth", "peer", "name", "lan0", "netns", up)
    ip("-n", mux, "link", "add", "host0", "type", "veth", "peer", "name", "host0p")
    ip("-n", mux, "link", "add", "gw0", "link", "host0", "type", "macvlan", "mode", "bridge")
    ip("-n", mux, "link", "add", "wl0", "link", "host0", "type", "macvlan", "mode", "bridge")
    ip("-n", mux, "link", "set", "wl0", "netns", wl, "name", "eth0")
    nsutil.write_sysctls(mux, [("net.ipv6.conf.all.forwarding", "1")])
    for dev in ("host0", "host0p", "gw0", "up0"):
        ip("-n", mux, "link", "set", dev, "up")
    ip("-n", mux, "addr", "add", f"{GW}/64", "dev", "gw0", "nodad")
    ip("-n", mux, "addr", "add", f"{MUX_UP_ADDR}/64", "dev", "up0", "nodad")
    ip("-n", mux, "route", "add", "default", "via", UP_ADDR)
    ip("-n", up, "link", "set", "lan0", "up")
    ip("-n", up, "addr", "add", f"{UP_ADDR}/64", "dev", "lan0", "nodad")
    ip("-n", up, "route", "add", f"{PREFIX}/64", "via", MUX_UP_ADDR)
    wlcfg = config.workload_from("web", overrides={"ports": ports})
    firewall.apply_workload(host, wlcfg, wl)  # before the link comes up
    ip("-n", wl, "addr", "add", f"{WL_ADDR}/64", "dev", "eth0", "nodad")
    ip("-n", wl, "link", "set", "eth0", "up")
    ip("-n", wl, "route", "add", "default", "via", GW)
    denylist.apply_guard(host)
    warm_up(up, WL_ADDR)
    return Topo(up, mux, wl, host)


def warm_up(netns: str, dst: str) -> None:
    """Resolve neighbours along the path first: a burst into an unresolved neighbour
    overflows its queue, and a lost SYN is retried only after a second."""
    for _ in range(20):
        r = subprocess.run(
            ["ip", "netns", "exec", netns, "ping", "-6", "-c1", "-W1", "-i0.2", dst],
            capture_output=True,
            check=False,
        )
        if r.returncode == 0:
            return


def listen_tcp(netns: str, ports: Iterable[int]) -> list[socket.socket]:
    def make() -> list[socket.socket]:
        out = []
        for port in ports:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            s.listen(64)
            out.append(s)
        return out

    return nsutil.run_in_netns(netns, make)


def scan_tcp(
    netns: str, src: str | None, dst: str, ports: Iterable[int], timeout: float = 1.5
) -> dict[int, str]:
    """Non-blocking connects: {port: 'open'|'closed'|'filtered'}.

    In batches of 512 (a burst of SYNs beyond the kernel's backlog queues is dropped), each
    waiting `timeout`: over a second, so a dropped SYN's retransmission still counts.
    """
    ports = list(ports)
    result: dict[int, str] = {}
    for i in range(0, len(ports), 512):
        result.update(_scan_batch(netns, src, dst, ports[i : i + 512], timeout))
    return result


def _scan_batch(
    netns: str, src: str | None, dst: str, ports: list[int], timeout: float
) -> dict[int, str]:

    def make(port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setblocking(False)
        if src:
            s.bind((src, 0))
        err = s.connect_ex((dst, port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, f"connect to port {port}")
        return s

    socks = nsutil.run_in_netns(netns, lambda: {p: make(p) for p in ports})
    result = dict.fromkeys(ports, "filtered")
    pending = {s.fileno(): p for p, s in socks.items()}
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLOUT | select.POLLERR | select.POLLHUP)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for fd, _ev in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            port = pending.pop(fd, None)
            if port is None:
                continue
            poller.unregister(fd)
            err = socks[port].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            result[port] = "open" if err == 0 else "closed"
    for s in socks.values():
        s.close()
    return result


def tcp_ok(netns: str, src: str | None, dst: str, port: int, timeout: float = 1.0) -> bool:
    return scan_tcp(netns, src, dst, [port], timeout)[port] == "open"


def udp_flood(netns: str, src: str, dst: str, port: int, count: int, size: int = 64) -> float:
    """Send `count` datagrams as fast as possible; returns the seconds it took."""

    def send() -> float:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind((src, 0))
        data = b"x" * size
        t0 = time.monotonic()
        for _ in range(count):
            with contextlib.suppress(OSError):  # ENOBUFS/ECONNREFUSED under load
                s.sendto(data, (dst, port))
        s.close()
        return time.monotonic() - t0

    return nsutil.run_in_netns(netns, send)


def raw_echo_replies(netns: str, sources: Iterable[str], dst: str, each: int = 1) -> int:
    """`each` ICMPv6 echo replies from every source address, written whole through a raw
    socket (any source, nothing to configure; conntrack keeps no state for them). Returns
    how many were sent."""
    import ipaddress

    def send() -> int:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        daddr = ipaddress.IPv6Address(dst).packed
        icmp = bytes([129, 0, 0, 0, 0, 1, 0, 1])  # echo reply, checksum left 0
        n = 0
        for src in sources:
            pkt = b"\x60\0\0\0\0\x08\x3a\x40" + ipaddress.IPv6Address(src).packed + daddr + icmp
            for _ in range(each):
                with contextlib.suppress(OSError):  # ENOBUFS under load
                    s.sendto(pkt, (dst, 0))
                    n += 1
        s.close()
        return n

    return nsutil.run_in_netns(netns, send)


def link_local(netns: str, ifname: str) -> str:
    """The interface's link-local address once it is usable ('' before)."""
    out = subprocess.run(["ip", "-n", netns, "-6", "addr", "show", "dev", ifname, "scope", "link"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    if "tentative" in out:
        return ""
    for word in out.split():
        if word.startswith("fe80::"):
            return word.split("/")[0]
    return ""


def send_ra(netns: str, ifname: str, prefix: str, lifetime: int = 1800) -> None:
    """One router advertisement to ff02::1 on `ifname` (router lifetime, one /64 prefix for
    SLAAC), from the interface's link-local address, as a rogue radvd would send it."""
    import ipaddress
    import struct

    def send() -> None:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, lifetime, 0, 0)
        pio = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0)
        pio += ipaddress.IPv6Address(prefix).packed
        s.sendto(ra + pio, ("ff02::1", 0, 0, socket.if_nametoindex(ifname)))
        s.close()

    nsutil.run_in_netns(netns, send)


def auto_denied(host: config.HostConfig) -> list[str]:
    from netmux import denylist

    return [str(d.prefix) for d in denylist.entries(host) if d.source == "auto"]


def tcp_upload(netns: str, src: str, dst: str, server: socket.socket, size: int) -> int:
    """Send `size` bytes over one TCP connection to `server` (a listening socket in the
    destination namespace, drained by a thread here); returns the bytes received."""
    got: list[int] = []

    def drain() -> None:
        conn, _ = server.accept()
        n = 0
        with conn:
            while chunk := conn.recv(1 << 16):
                n += len(chunk)
        got.append(n)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def send() -> None:
        with socket.create_connection((dst, server.getsockname()[1]), 5, (src, 0)) as c:
            c.sendall(b"x" * size)

    nsutil.run_in_netns(netns, send)
    reader.join(10)
    return got[0] if got else 0
