"""Firewall costs: ruleset apply time, and what a workload still receives under a flood.

Measured in one run, in namespaces of its own (benchfw-up / benchfw-mux / benchfw-wl, the
topology of tests/fwtopo.py; traffic never leaves them):

1. apply   the workload ruleset (4 ports) and mux's guard table (100 denylist entries)
           loaded N times each: libnftables in a thread inside the netns (netmux) vs
           `ip netns exec NS nft -f -` (the peer), interleaved. "cmd only" is the library
           call on a context that already exists (0.3 ms for a workload ruleset). The rest
           of an apply (a thread entering the namespace, a fresh context, and the kernel
           releasing a replaced table after an RCU grace period) is ~1 ms on a quiet
           machine and grows to ~10 ms under the load of parallel test runs; the `nft -f`
           peer pays process start-up on top.
2. flood   a legitimate sender (prefix 2001:db8:b::/48) sends UDP to a declared port for
           D seconds as fast as it can; the workload's per-port counter gives the packets/s
           it received. Then the same with a concurrent flood (one or two senders) from a
           denylisted prefix (2001:db8:c::/48) that mux drops in prerouting. Reported: the
           ratio of received packets/s with and without the flood, and how many flood
           packets mux dropped. Senders are separate processes with bounded loops.

Run as root: `.venv/bin/python -m bench.firewall [--quick]`. Prints tables and writes
bench/results/firewall.json.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

from bench.common import machine, ms, now, summary, table, write_results
from netmux import config, denylist, firewall, nsutil
from tests import fwtopo

NS = ("benchfw-up", "benchfw-mux", "benchfw-wl")
PORT = 9000
FRESH = "benchfw-new"

SENDER = r"""
import socket, sys, time
src, dst = sys.argv[1], sys.argv[2]
port, seconds, limit = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind((src, 0))
data = b"x" * 64
sent = 0
end = time.monotonic() + seconds
while sent < limit:
    for _ in range(256):
        try:
            s.sendto(data, (dst, port))
        except OSError:
            pass
    sent += 256
    if time.monotonic() > end:
        break
print(sent)
"""


def sender(netns: str, src: str, seconds: float, limit: int) -> subprocess.Popen[str]:
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", SENDER, src, fwtopo.WL_ADDR,
            str(PORT), str(seconds), str(limit)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def received(t: fwtopo.Topo) -> int:
    return firewall.port_counters(t.wl)[f"udp_{PORT}"]["packets"]


def guard_drops(t: fwtopo.Topo) -> int:
    out = firewall.run_nft(t.mux, f"list counter inet {firewall.GUARD_TABLE} denied")
    return int(next(i["counter"]["packets"] for i in out["nftables"] if "counter" in i))


def apply_subprocess(netns: str, text: str) -> None:
    """firewall.apply through `ip netns exec NAME nft -f -`: the peer it is measured against."""
    r = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode:
        raise firewall.NftError(f"nft -f in {netns}: {r.stderr.strip()}")


def bench_apply(t: fwtopo.Topo, runs: int) -> dict[str, Any]:
    """create: into a fresh namespace (a workload's first apply, before its link is up);
    replace: an atomic reload over a live table (the old base chains are released after an
    RCU grace period, which the next transaction may wait for: slow on a loaded machine)."""
    wl = config.workload_from("web", overrides={"ports": ["tcp/80", "tcp/443", "udp/53",
                                                          f"udp/{PORT}"]})  # fmt: skip
    wl_text = firewall.render_workload(t.host, wl)
    entries = [firewall.DenyEntry(IPv6Network(f"2001:db8:{i:x}::/48")) for i in range(1, 101)]
    guard_text = firewall.render_guard(t.host, entries)
    samples: dict[str, list[float]] = {}
    cases = (("wl", t.wl, wl_text), ("guard", t.mux, guard_text))
    for _ in range(runs):
        for key, ns, text in cases:
            for mode in ("create", "replace"):
                for how, fn in (("lib", firewall.apply), ("nft", apply_subprocess)):
                    target = ns
                    if mode == "create":  # a fresh namespace, as for a new workload
                        target = FRESH
                        subprocess.run(["ip", "netns", "add", FRESH], check=True)
                    try:
                        t0 = now()
                        fn(target, text)
                        samples.setdefault(f"{key}_{mode}_{how}", []).append(now() - t0)
                    finally:
                        if mode == "create":
                            subprocess.run(["ip", "netns", "del", FRESH], check=True)
    # The library call alone (one thread that stays in the namespace, one context): what
    # the kernel and libnftables cost without the thread start and setns around them.
    for key, ns, text in cases:

        def loop(text: str = text) -> list[float]:
            import nftables

            nft = nftables.Nftables()
            out = []
            for _ in range(runs):
                t0 = now()
                rc, _, err = nft.cmd(text)
                out.append(now() - t0)
                assert rc == 0, err
            return out

        samples[f"{key}_replace_cmd"] = nsutil.run_in_netns(ns, loop)
    firewall.apply(t.wl, wl_text)
    denylist.apply_guard(t.host)
    return {k: summary(v) for k, v in samples.items()}


def bench_flood(t: fwtopo.Topo, seconds: float, rounds: int, flooders: int) -> dict[str, Any]:
    legit, bad = fwtopo.source("b"), fwtopo.source("c")
    t.add_sources([legit, bad])
    denylist.add(t.host, IPv6Network("2001:db8:c::/48"))
    limit = 50_000_000  # the loops are bounded by time and by count
    rows: dict[str, list[float]] = {"alone": [], "flooded": []}
    flood_sent: list[int] = []
    flood_dropped: list[int] = []
    for _ in range(rounds):
        for mode in ("alone", "flooded"):
            floods = [
                sender(t.up, bad, seconds + 0.5, limit)
                for _ in range(flooders if mode == "flooded" else 0)
            ]
            if floods:
                time.sleep(0.25)  # the flood is running before the measurement starts
            d0 = guard_drops(t)
            r0 = received(t)
            t0 = now()
            p = sender(t.up, legit, seconds, limit)
            p.communicate(timeout=seconds + 30)
            dt = now() - t0
            rows[mode].append((received(t) - r0) / dt)
            for f in floods:
                fout, _ = f.communicate(timeout=seconds + 30)
                flood_sent.append(int(fout or 0))
            if floods:
                flood_dropped.append(guard_drops(t) - d0)
    return {
        "received_pps": {k: summary(v) for k, v in rows.items()},
        "ratio_median": summary(rows["flooded"])["median"] / summary(rows["alone"])["median"],
        "flooders": flooders,
        "flood_sent_per_round": flood_sent,
        "flood_dropped_in_mux_during_measurement": flood_dropped,
        "seconds_per_round": seconds,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--runs", type=int, default=200, help="apply runs")
    ap.add_argument("--seconds", type=float, default=2.0, help="flood: seconds per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flooders", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds, args.rounds = 20, 0.5, 1
    tmp = Path(tempfile.mkdtemp(prefix="benchfw."))
    made: list[str] = []
    try:
        for n in NS:
            subprocess.run(["ip", "netns", "add", n], check=True)
            made.append(n)
            subprocess.run(["ip", "-n", n, "link", "set", "lo", "up"], check=True)
        host = fwtopo.host_config(NS[1], tmp, "[deny]\nauto = false\n")
        t = fwtopo.build(*NS, host, ["tcp/80", f"udp/{PORT}"])
        apply = bench_apply(t, args.runs)
        flood = bench_flood(t, args.seconds, args.rounds, args.flooders)
    finally:
        for n in reversed(made):
            subprocess.run(["ip", "netns", "del", n], check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    names = {"wl": "workload (4 ports)", "guard": "guard + 100 denied"}
    for what in ("wl", "guard"):
        for mode in ("create", "replace"):
            lib, nft = apply[f"{what}_{mode}_lib"], apply[f"{what}_{mode}_nft"]
            rows.append([f"{names[what]}, {mode}", ms(lib["median"]), ms(lib["p95"]),
                         ms(nft["median"]), ms(nft["p95"]),
                         f"{nft['median'] / lib['median']:.1f}x"])  # fmt: skip
    for what in ("wl", "guard"):
        cmd = apply[f"{what}_replace_cmd"]
        rows.append([f"{names[what]}, replace, cmd only", ms(cmd["median"]), ms(cmd["p95"]),
                     "-", "-", "-"])  # fmt: skip
    print("ruleset apply (ms)")
    print(table(rows, ["ruleset", "libnftables med", "p95", "nft -f med", "p95", "speed-up"]))
    pps = flood["received_pps"]
    print(f"\nworkload receive rate, {args.seconds:g} s x {args.rounds} rounds "
          f"({args.flooders} flooder(s) from a denylisted /48)")  # fmt: skip
    print(table(
        [["no flood", f"{pps['alone']['median']:.0f}"],
         ["flood dropped in mux", f"{pps['flooded']['median']:.0f}"],
         ["ratio", f"{flood['ratio_median']:.2f}"]],
        ["case", "received pkt/s (median)"],
    ))  # fmt: skip
    path = write_results(
        "firewall", {"machine": machine(), "apply": apply, "flood": flood, "args": vars(args)}
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
