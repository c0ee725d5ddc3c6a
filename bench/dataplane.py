"""Data plane: throughput, latency and CPU per Gbit through netmux vs plain namespaces.

Everything runs in one lab of its own (netns bench-dmux / bench-drtr, uplink benchdu0,
paths under /run/netmux-bench-dataplane, the lab's upstream with kea, tayga and IPv4 where
installed) plus bare namespaces for the peers (bench-dp*); traffic never leaves them.
iperf3 (TCP, one stream) measures throughput and the CPU its two processes used (user +
system, which includes the softirq work the kernel does in their context: forwarding,
nftables, tayga's TUN); `ping -i 0.01` the round trip. The cases, interleaved round by
round so that the machine's load hits all of them alike:

1. wl-wl        two netmux workloads on mux's shared macvlan parent (their firewall and
                egress tables on)    vs  veth-pair: a veth pair between two bare netns.
2. wl-up        workload -> the lab router through mux (gw0, forwarding, guard table)
                vs  routed: the same shape (veth uplink, macvlans on a veth parent) in
                bare namespaces, plain routing, no nftables table anywhere.
3. nat64        workload -> the router's IPv4 address through the NAT64 prefix (tayga's
                TUN + masquerade)  vs  ipv4-mux: plain IPv4 from mux to the same server,
                and routed-v4: IPv4 forwarded in the bare routed topology.
4. tables       wl-wl and wl-up again with the workloads' firewall tables deleted
                (no-wl-fw), and wl-up and router -> workload without netmux's guard
                (no-guard: mux's guard table and the workloads' netdev egress guards);
                restored after each case.
5. flood        router -> workload (inbound, legitimate) while the router also floods UDP
                at the workload from a denylisted /64 (Python loop, raw sender): dropped
                where netmux drops it now (guard, prerouting priority -150, after
                conntrack) vs an extra netdev ingress chain on the uplink (the earliest
                hook nftables has), vs no flood. The flood is paced (--flood-pps) so
                that both placements get the same load; the sender's own system time
                per packet (send + drop, in its context on a veth) is the drop's cost.

Ratios are netmux / peer, medians. Run as root: `.venv/bin/python -m bench.dataplane
[--rounds N] [--seconds S] [--quick]`. Prints tables, writes bench/results/dataplane.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from bench import common
from bench.common import load_config, machine, summary, table, write_results
from netmux import config, denylist, firewall, lab, nsutil, workload
from netmux.config import HostConfig
from netmux.lab import upstream

BASE = Path("/run/netmux-bench-dataplane")
MUX, RTR, UPLINK = "bench-dmux", "bench-drtr", "benchdu0"
PORT = 5201
WL_A, WL_B = "bd-a", "bd-b"
# bare peers: a veth pair, and up/mux/wl routed like netmux's lab but without nftables
VA, VB = "bench-dpa", "bench-dpb"
PUP, PMUX, PWL = "bench-dpup", "bench-dpmux", "bench-dpwl"
FLOOD_NET = IPv6Network("2001:db8:f1::/64")
FLOOD_SRC = "2001:db8:f1::1"
INGRESS_TABLE = "bench_ingress"
FLOOD_EXTRA = 2.5  # the flood runs this much longer than iperf3: over the pings after it

CONFIG = common.lab_config(BASE, MUX, RTR, UPLINK, common.NAT64_SECTION)

# A paced sender: bursts of 64 datagrams at `pps` on average (0: as fast as it can). Paced,
# both drop placements get the same offered load; unpaced, a cheaper drop lets the
# CPU-bound sender send more and take more of the shared CPU.
FLOODER = r"""
import resource, socket, sys, time
src, dst, seconds, pps = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((src, 0))
data = b"x" * 64
sent = 0
t0 = time.monotonic()
end = t0 + seconds
while (now := time.monotonic()) < end:
    if pps and sent > (now - t0) * pps:
        time.sleep(min(0.002, sent / pps - (now - t0)))
        continue
    for _ in range(64):
        try:
            s.sendto(data, (dst, 9))
        except OSError:
            pass
    sent += 64
ru = resource.getrusage(resource.RUSAGE_SELF)
print(sent, ru.ru_utime, ru.ru_stime)
"""


def sh(*argv: str, netns: str | None = None, check: bool = True) -> str:
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    r = subprocess.run(full, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"`{' '.join(full)}`: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def ipn(netns: str, *args: str) -> None:
    sh("ip", "-n", netns, *args)


# --- the bare peers -------------------------------------------------------------------------


def bare_ns(name: str) -> None:
    sh("ip", "netns", "add", name)
    ipn(name, "link", "set", "lo", "up")
    nsutil.write_sysctls(
        name, [("net.ipv6.conf.all.accept_dad", "0"), ("net.ipv6.conf.default.accept_dad", "0")]
    )


def plain_up() -> None:
    """veth pair VA-VB; and PUP -veth- PMUX (host0 veth parent, macvlans gw0/wl0) - PWL."""
    for n in (VA, VB, PUP, PMUX, PWL):
        bare_ns(n)
    ipn(VA, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", VB)
    for n, a in ((VA, "2001:db8:d1::1"), (VB, "2001:db8:d1::2")):
        ipn(n, "addr", "add", f"{a}/64", "dev", "eth0", "nodad")
        ipn(n, "link", "set", "eth0", "up")
    ipn(PMUX, "link", "add", "up0", "type", "veth", "peer", "name", "lan0", "netns", PUP)
    ipn(PMUX, "link", "add", "host0", "type", "veth", "peer", "name", "host0p")
    ipn(PMUX, "link", "add", "gw0", "link", "host0", "type", "macvlan", "mode", "bridge")
    ipn(PMUX, "link", "add", "wl0", "link", "host0", "type", "macvlan", "mode", "bridge")
    ipn(PMUX, "link", "set", "wl0", "netns", PWL, "name", "eth0")
    nsutil.write_sysctls(
        PMUX, [("net.ipv6.conf.all.forwarding", "1"), ("net.ipv4.ip_forward", "1")]
    )
    for dev in ("host0", "host0p", "gw0", "up0"):
        ipn(PMUX, "link", "set", dev, "up")
    ipn(PMUX, "addr", "add", "2001:db8:d2::1/64", "dev", "gw0", "nodad")
    ipn(PMUX, "addr", "add", "2001:db8:d3::1/64", "dev", "up0", "nodad")
    ipn(PMUX, "addr", "add", "203.0.113.17/28", "dev", "gw0")
    ipn(PMUX, "addr", "add", "203.0.113.2/29", "dev", "up0")
    ipn(PMUX, "route", "add", "default", "via", "2001:db8:d3::2")
    ipn(PMUX, "-4", "route", "add", "default", "via", "203.0.113.1")
    ipn(PUP, "link", "set", "lan0", "up")
    ipn(PUP, "addr", "add", "2001:db8:d3::2/64", "dev", "lan0", "nodad")
    ipn(PUP, "addr", "add", "203.0.113.1/29", "dev", "lan0")
    ipn(PUP, "route", "add", "2001:db8:d2::/64", "via", "2001:db8:d3::1")
    ipn(PUP, "-4", "route", "add", "203.0.113.16/28", "via", "203.0.113.2")
    ipn(PWL, "addr", "add", "2001:db8:d2::100/64", "dev", "eth0", "nodad")
    ipn(PWL, "addr", "add", "203.0.113.18/28", "dev", "eth0")
    ipn(PWL, "link", "set", "eth0", "up")
    ipn(PWL, "route", "add", "default", "via", "2001:db8:d2::1")
    ipn(PWL, "-4", "route", "add", "default", "via", "203.0.113.17")


def plain_down() -> None:
    for n in (VA, VB, PUP, PMUX, PWL):
        if lab.netns_exists(n):
            sh("ip", "netns", "del", n, check=False)


# --- the netmux side ------------------------------------------------------------------------


def host_config() -> HostConfig:
    return load_config(BASE, CONFIG)


def netmux_down(host: HostConfig) -> None:
    for name in workload.known(host):
        with contextlib.suppress(Exception):
            workload.down(host, name)
    lab.down(host, force=True)


def global_addr(netns: str) -> str:
    out = sh("ip", "-n", netns, "-j", "-6", "addr", "show", "dev", "eth0", "scope", "global")
    for link in json.loads(out):
        for a in link.get("addr_info", []):
            if "local" in a and not a.get("deprecated"):
                return str(a["local"])
    raise RuntimeError(f"{netns}: no global address on eth0")


def netmux_up(host: HostConfig) -> dict[str, str]:
    lab.up(host)
    ports = {"ports": [f"tcp/{PORT}", f"udp/{PORT}"], "publish": False}
    for name in (WL_A, WL_B):
        workload.up(host, config.workload_from(name, ports), exec_cmd=False)
    have_v4 = shutil.which("tayga") is not None and upstream.available()
    if have_v4:
        upstream.wait_ipv4(host)
    ipn(RTR, "addr", "replace", f"{FLOOD_SRC}/128", "dev", "lo")
    return {"a": global_addr(WL_A), "b": global_addr(WL_B), "v4": "1" if have_v4 else ""}


# --- measuring ------------------------------------------------------------------------------


def busy_jiffies() -> int:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f) - f[3] - f[4]  # all but idle and iowait


@dataclass
class Flow:
    gbps: float
    cpu_s_per_gbit: float  # the two iperf3 processes (user+sys)
    machine_s_per_gbit: float  # /proc/stat busy time of the whole machine


def iperf(netns: str, dst: str, seconds: float, src: str | None = None) -> Flow:
    argv = ["iperf3", "-c", dst, "-p", str(PORT), "-t", f"{seconds:g}", "-J",
            "--connect-timeout", "3000"]  # fmt: skip
    if src:
        argv += ["-B", src]
    for attempt in range(3):
        j0 = busy_jiffies()
        r = subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True)
        dj = busy_jiffies() - j0
        data = json.loads(r.stdout or "{}")
        if r.returncode == 0 and "error" not in data:
            end = data["end"]
            gbps = end["sum_received"]["bits_per_second"] / 1e9
            dur = end["sum_received"]["seconds"]
            cpu = end["cpu_utilization_percent"]
            cpu_s = (cpu["host_total"] + cpu["remote_total"]) / 100 * dur
            gbit = max(gbps * dur, 1e-9)
            return Flow(gbps, cpu_s / gbit, dj / os.sysconf("SC_CLK_TCK") / gbit)
        time.sleep(0.3 * (attempt + 1))  # "the server is busy": the last test still closing
    raise RuntimeError(f"iperf3 {netns} -> {dst}: {data.get('error') or r.stderr.strip()}")


def ping_rtts(netns: str, dst: str, count: int) -> list[float]:
    out = sh("ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1", dst, netns=netns,
             check=False)  # fmt: skip
    return [float(m) / 1000 for m in re.findall(r"time=([\d.]+) ms", out)]


def warm(netns: str, dst: str) -> None:
    for _ in range(30):
        if ping_rtts(netns, dst, 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{netns} cannot reach {dst}")


@contextlib.contextmanager
def servers(namespaces: list[str]) -> Iterator[None]:
    argv = ["iperf3", "-s", "-p", str(PORT)]
    quiet = subprocess.DEVNULL
    procs = [
        subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=quiet, stderr=quiet)
        for ns in namespaces
    ]
    try:
        time.sleep(0.3)
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def without_tables(netns: str, tables: list[str]) -> Iterator[None]:
    """Delete netmux's tables in `netns` for one case, put them back exactly after."""
    saved = [sh("nft", "list", "table", *t.split(), netns=netns, check=False) for t in tables]
    for t, text in zip(tables, saved, strict=True):
        if text:
            sh("nft", "delete", "table", *t.split(), netns=netns)
    try:
        yield
    finally:
        for text in saved:
            if text:
                firewall.apply_subprocess(netns, text)


@contextlib.contextmanager
def without_guard(host: HostConfig) -> Iterator[None]:
    """Without mux's guard table and the workloads' netdev egress guards (RA and source
    guard on their links): the guard netmux puts around the workloads."""
    with contextlib.ExitStack() as st:
        for ns in (WL_A, WL_B):
            st.enter_context(without_tables(ns, ["netdev " + firewall.EGRESS_TABLE]))
        sh("nft", "delete", "table", "inet", firewall.GUARD_TABLE, netns=MUX)
        try:
            yield
        finally:
            firewall.apply_guard(host)


def ingress_drop_text(prefix: IPv6Network) -> str:
    """The denylist drop at the earliest hook: netdev ingress on the uplink."""
    t = f"netdev {INGRESS_TABLE}"
    return (
        f"table {t}\ndelete table {t}\ntable {t} {{\n"
        f"\tchain ingress {{\n\t\ttype filter hook ingress device {UPLINK} priority -500; "
        "policy accept;\n"
        f"\t\tip6 saddr {prefix} counter drop\n\t}}\n}}\n"
    )


@contextlib.contextmanager
def flood(dst: str, seconds: float, where: str, pps: float) -> Iterator[dict[str, int]]:
    """A UDP flood from FLOOD_SRC (denylisted) to dst for the whole case."""
    if where == "ingress":
        firewall.apply(MUX, ingress_drop_text(FLOOD_NET))
    stats: dict[str, int] = {}
    p = subprocess.Popen(
        ["ip", "netns", "exec", RTR, sys.executable, "-c", FLOODER, FLOOD_SRC, dst,
         f"{seconds + FLOOD_EXTRA:g}", f"{pps:g}"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(0.3)  # the flood is on before the measurement starts
        yield stats
    finally:
        out, _ = p.communicate(timeout=seconds + 30)
        sent, _user, system = [*out.split(), "0", "0", "0"][:3]
        stats["sent"] = int(sent)
        stats["sys_ns_per_packet"] = int(float(system) * 1e9 / max(int(sent), 1))
        if where == "ingress":
            sh("nft", "delete", "table", "netdev", INGRESS_TABLE, netns=MUX)


Case = tuple[str, str, str, Callable[[], contextlib.AbstractContextManager[Any]]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="per iperf3 run")
    ap.add_argument("--pings", type=int, default=20, help="pings per case and round")
    ap.add_argument(
        "--flood-pps", type=float, default=30000, help="the flood's rate (0: as fast as it can)"
    )
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.pings = 1, 1.0, 10
    for prog in ("iperf3", "ping", "nft"):
        if not shutil.which(prog):
            print(f"bench.dataplane: {prog} is not installed (make deps)", file=sys.stderr)
            return 2
    info = machine()
    host = host_config()
    netmux_down(host)
    plain_down()
    flows: dict[str, list[Flow]] = {}
    rtts: dict[str, list[float]] = {}
    floods: dict[str, list[dict[str, int]]] = {}
    try:
        addr = netmux_up(host)
        plain_up()
        a, b, rtr6, rtr4 = addr["a"], addr["b"], str(host.lab.router_address.ip), "192.0.2.1"
        nat64_dst = str(IPv6Address(int(common.NAT64.network_address) | int(IPv4Address(rtr4))))
        denylist.add(host, FLOOD_NET)
        wl_tables = ["inet " + firewall.WORKLOAD_TABLE]
        nothing = contextlib.nullcontext

        def no_wl_fw() -> contextlib.ExitStack:
            st = contextlib.ExitStack()
            for ns in (WL_A, WL_B):
                st.enter_context(without_tables(ns, wl_tables))
            return st

        cases: list[Case] = [
            ("wl-wl netmux", WL_A, b, nothing),
            ("wl-wl veth-pair", VA, "2001:db8:d1::2", nothing),
            ("wl-wl netmux no-wl-fw", WL_A, b, no_wl_fw),
            ("wl-up netmux", WL_A, rtr6, nothing),
            ("wl-up routed", PWL, "2001:db8:d3::2", nothing),
            ("wl-up netmux no-wl-fw", WL_A, rtr6, no_wl_fw),
            ("wl-up netmux no-guard", WL_A, rtr6, lambda: without_guard(host)),
            ("up-wl netmux", RTR, a, nothing),
            ("up-wl netmux no-guard", RTR, a, lambda: without_guard(host)),
            ("up-wl routed", PUP, "2001:db8:d2::100", nothing),
        ]
        if addr["v4"]:
            cases += [
                ("nat64 netmux (tayga)", WL_A, nat64_dst, nothing),
                ("ipv4 from mux", MUX, rtr4, nothing),
                ("ipv4 routed-v4", PWL, "203.0.113.1", nothing),
            ]
        else:
            print("no kea/tayga here: the common.NAT64 cases are left out", file=sys.stderr)
        flood_cases: list[tuple[str, str]] = [
            ("up-wl flood dropped in prerouting (now)", "prerouting"),
            ("up-wl flood dropped at netdev ingress", "ingress"),
        ]
        for ns, dst in [(c[1], c[2]) for c in cases]:
            warm(ns, dst)
        with servers([WL_A, WL_B, VB, RTR, PUP, PWL]):
            for rnd in range(args.rounds):
                for name, ns, dst, ctx in cases:
                    with ctx():
                        flows.setdefault(name, []).append(iperf(ns, dst, args.seconds))
                        rtts.setdefault(name, []).extend(ping_rtts(ns, dst, args.pings))
                for name, where in flood_cases:
                    with flood(a, args.seconds, where, args.flood_pps) as st:
                        flows.setdefault(name, []).append(iperf(RTR, a, args.seconds))
                        rtts.setdefault(name, []).extend(ping_rtts(RTR, a, args.pings))
                    floods.setdefault(name, []).append(st)
                print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
        leaked = sh("nft", "list", "counter", "inet", firewall.GUARD_TABLE, "denied",
                    netns=MUX)  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            denylist.remove(host, FLOOD_NET)
        netmux_down(host)
        plain_down()
    return report(args, info, flows, rtts, floods, leaked)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    flows: dict[str, list[Flow]],
    rtts: dict[str, list[float]],
    floods: dict[str, list[dict[str, int]]],
    guard_counter: str,
) -> int:
    stats: dict[str, dict[str, Any]] = {}
    for name, fs in flows.items():
        rt = summary(rtts.get(name, []))
        stats[name] = {
            "gbps": med([f.gbps for f in fs]),
            "cpu_s_per_gbit": med([f.cpu_s_per_gbit for f in fs]),
            "machine_s_per_gbit": med([f.machine_s_per_gbit for f in fs]),
            "rtt_median": rt.get("median"),
            "rtt_p95": rt.get("p95"),
            "runs": len(fs),
            "samples_gbps": [f.gbps for f in fs],
        }
        if name in floods:
            sent = med([float(x["sent"]) for x in floods[name]])
            stats[name]["flood_pps"] = sent / (args.seconds + FLOOD_EXTRA)
            stats[name]["flood_sys_ns_per_packet"] = med(
                [float(x["sys_ns_per_packet"]) for x in floods[name]]
            )

    def us(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e6:.0f}"

    rows = [
        [n, f"{s['gbps']:.2f}", f"{s['cpu_s_per_gbit']:.3f}", f"{s['machine_s_per_gbit']:.3f}",
         us(s["rtt_median"]), us(s["rtt_p95"])]
        for n, s in stats.items()
    ]  # fmt: skip
    print(f"data plane, iperf3 TCP 1 stream, {args.rounds} x {args.seconds:g} s, medians")
    print(table(rows, ["case", "Gbit/s", "CPU s/Gbit", "machine s/Gbit", "rtt µs", "p95 µs"]))
    pairs = [
        ("wl-wl netmux", "wl-wl veth-pair"),
        ("wl-up netmux", "wl-up routed"),
        ("up-wl netmux", "up-wl routed"),
        ("nat64 netmux (tayga)", "ipv4 from mux"),
        ("nat64 netmux (tayga)", "ipv4 routed-v4"),
        ("nat64 netmux (tayga)", "wl-up netmux"),
        ("wl-wl netmux", "wl-wl netmux no-wl-fw"),
        ("wl-up netmux", "wl-up netmux no-wl-fw"),
        ("up-wl netmux", "up-wl netmux no-guard"),
        ("wl-up netmux", "wl-up netmux no-guard"),
        ("up-wl flood dropped in prerouting (now)", "up-wl netmux"),
        ("up-wl flood dropped at netdev ingress", "up-wl netmux"),
        ("up-wl flood dropped at netdev ingress", "up-wl flood dropped in prerouting (now)"),
    ]
    ratios: dict[str, dict[str, float]] = {}
    rrows = []
    for x, y in pairs:
        if x not in stats or y not in stats:
            continue
        sx, sy = stats[x], stats[y]
        r = {
            "throughput": sx["gbps"] / sy["gbps"],
            "cpu_per_gbit": sx["cpu_s_per_gbit"] / sy["cpu_s_per_gbit"],
            "machine_cpu_per_gbit": sx["machine_s_per_gbit"] / sy["machine_s_per_gbit"],
            "rtt": (sx["rtt_median"] or 0) / (sy["rtt_median"] or 1),
        }
        ratios[f"{x} / {y}"] = r
        rrows.append([f"{x} / {y}", f"{r['throughput']:.2f}", f"{r['cpu_per_gbit']:.2f}",
                      f"{r['machine_cpu_per_gbit']:.2f}", f"{r['rtt']:.2f}"])  # fmt: skip
    print("\nratios (netmux / peer)")
    print(table(rrows, ["pair", "throughput", "CPU/Gbit", "machine/Gbit", "rtt"]))
    for name in floods:
        s = stats[name]
        print(
            f"{name}: flood ≈ {s['flood_pps']:.0f} pkt/s offered, the flooder's system "
            f"time {s['flood_sys_ns_per_packet']:.0f} ns per packet (send + the drop)"
        )
    data = {"machine": info, "args": vars(args), "stats": stats, "ratios": ratios,
            "guard_denied": guard_counter}  # fmt: skip
    path = write_results("dataplane", data)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
