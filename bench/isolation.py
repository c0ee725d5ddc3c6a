"""What isolation costs: a macvlan workload vs a routed one (`link = "routed"`), same run.

On a lab of its own (netns bench-imux / bench-irtr, uplink benchiu0, paths under
/run/netmux-bench-iso; never the host's NICs), with a macvlan sibling `bench-isrv`
running an iperf3 server (its port declared, so its firewall lets it in) and another in
the lab's router namespace (upstream, through mux's uplink):

1. start   `netmux up` in-process → usable (global address + default route, what `up`
           waits for) and `down` → gone, the two modes interleaved.
2. latency ping RTTs (one every 5 ms) from a client workload of each mode to the
           sibling and to the upstream router; per-reply medians.
3. throughput iperf3 (TCP, one stream) from each client to both servers, both
           directions, the two modes interleaved round by round; medians.

The routed path is workload → veth → mux (forwarding, its netdev filter, proxy NDP on
gw0) → segment; the macvlan path to the sibling stays inside the macvlan driver, and to
upstream it crosses mux's forwarding either way.

Run as root: `.venv/bin/python -m bench.isolation` (`--quick` for a smoke run). Prints
tables and writes bench/results/isolation.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.common import load_config, machine, ms, now, summary, table, write_results
from netmux import config, journal, lab, workload
from netmux.config import HostConfig

BASE = Path("/run/netmux-bench-iso")
MODES = ("macvlan", "routed")
SERVER = "bench-isrv"
CLIENTS = {"macvlan": "bench-icm", "routed": "bench-icr"}
IPERF_PORT = 5201

CONFIG = common.lab_config(BASE, "bench-imux", "bench-irtr", "benchiu0", common.DNS_SECTION)


def wl(name: str, link: str, ports: tuple[str, ...] = ()) -> config.WorkloadConfig:
    return config.workload_from(
        name, overrides={"link": link, "publish": False, "ports": list(ports) or None}
    )


def cleanup(host: HostConfig) -> None:
    common.lab_down(host, "bench-i", force=True)


def global_address(host: HostConfig, name: str) -> str:
    st = workload.status(host, name)
    return str(st["addresses"]["global"][0]).split("/")[0]


# --- measurements -----------------------------------------------------------------------


def start_cycles(host: HostConfig, runs: int) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {m: {"up": [], "down": []} for m in MODES}
    for i in range(runs):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:
            name = f"bench-is{mode[0]}"
            t0 = now()
            workload.up(host, wl(name, mode), exec_cmd=False)
            t1 = now()
            st = workload.status(host, name)
            if st["state"] != "up" or not st["default_route"] or not st["addresses"]["global"]:
                raise RuntimeError(f"{name}: not usable after up: {st}")
            t2 = now()
            workload.down(host, name)
            out[mode]["up"].append(t1 - t0)
            out[mode]["down"].append(now() - t2)
    return out


def us(v: float | int | None) -> str:
    return "-" if v is None else f"{v * 1e6:.0f}"


PING_TIME = re.compile(r"time=([0-9.]+) ms")


def ping_rtts(netns: str, dst: str, count: int) -> list[float]:
    """Per-reply RTTs in seconds (ping's own microsecond figures)."""
    r = subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-6", "-n", "-c", str(count), "-i", "0.005",
         "-W", "1", dst],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    rtts = [float(m) / 1000 for m in PING_TIME.findall(r.stdout)]
    if len(rtts) < count // 2:
        raise RuntimeError(f"ping {dst} from {netns}: {r.stdout[-200:]} {r.stderr.strip()}")
    return rtts


def iperf(netns: str, dst: str, seconds: float, reverse: bool) -> float:
    """bits per second received, one TCP stream."""
    argv = ["ip", "netns", "exec", netns, "iperf3", "-c", dst, "-p", str(IPERF_PORT),
            "-t", str(seconds), "-J", *(["-R"] if reverse else [])]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 30)
    data = json.loads(r.stdout or "{}")
    if "error" in data or r.returncode:
        raise RuntimeError(f"iperf3 to {dst} from {netns}: {data.get('error') or r.stderr}")
    return float(data["end"]["sum_received"]["bits_per_second"])


def iperf_server(netns: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        ["ip", "netns", "exec", netns, "iperf3", "-s", "-p", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    time.sleep(0.3)  # a bench, not a test: iperf3 has no readiness signal
    return p


def stop(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=5)


# --- main ---------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (few samples)")
    ap.add_argument("--runs", type=int, default=30, help="start cycles per mode")
    ap.add_argument("--rounds", type=int, default=3, help="iperf3 rounds per path")
    ap.add_argument("--seconds", type=float, default=3.0, help="iperf3 duration")
    args = ap.parse_args()
    runs, rounds, secs, pings = (
        (4, 1, 1.0, 50) if args.quick else (args.runs, args.rounds, args.seconds, 400)
    )
    journal.set_quiet(True)
    host = load_config(BASE, CONFIG)
    cleanup(host)
    servers: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    try:
        lab.up(host)
        workload.up(host, wl(SERVER, "macvlan", (f"tcp/{IPERF_PORT}",)), exec_cmd=False)
        for mode, name in CLIENTS.items():
            workload.up(host, wl(name, mode), exec_cmd=False)
        servers = [iperf_server(SERVER), iperf_server(host.lab.router_netns)]
        targets = {
            "sibling": global_address(host, SERVER),
            "upstream": str(host.lab.router_address.ip),
        }
        for name in CLIENTS.values():  # neighbours resolved before anything is timed
            for dst in targets.values():
                ping_rtts(name, dst, 3)

        starts = start_cycles(host, runs)
        rtt: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
        for target, dst in targets.items():
            for mode in MODES:
                rtt[mode][target] = ping_rtts(CLIENTS[mode], dst, pings)
        bps: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
        for i in range(rounds):
            for target, dst in targets.items():
                for reverse in (False, True):
                    key = f"{target} {'in' if reverse else 'out'}"
                    for mode in MODES if i % 2 == 0 else MODES[::-1]:
                        v = iperf(CLIENTS[mode], dst, secs, reverse)
                        bps[mode].setdefault(key, []).append(v)
    finally:
        for p in servers:
            stop(p)
        cleanup(host)

    rows = []
    for what in ("up", "down"):
        m, r = (summary(starts[x][what]) for x in MODES)
        label = "up → usable" if what == "up" else "down → gone"
        rows.append([label, m["n"], ms(m["median"]), ms(r["median"]), ms(r["p95"]),
                     f"{r['median'] / m['median']:.2f}"])  # fmt: skip
    for target in targets:
        m_rtt = statistics.median(rtt["macvlan"][target])
        r_rtt = statistics.median(rtt["routed"][target])
        p95 = summary(rtt["routed"][target])["p95"]
        rows.append([f"ping RTT to {target} (µs)", len(rtt["routed"][target]), us(m_rtt),
                     us(r_rtt), us(p95), f"{r_rtt / m_rtt:.2f}"])  # fmt: skip
    print(table(rows, ["start (ms) and latency (µs)", "n", "macvlan", "routed", "routed p95",
                       "routed/macvlan"]))  # fmt: skip
    print()
    trows = []
    for key in bps["macvlan"]:
        m_bps, r_bps = (statistics.median(bps[x][key]) for x in MODES)
        trows.append([f"iperf3 {key}", len(bps["routed"][key]), f"{m_bps / 1e9:.2f}",
                      f"{r_bps / 1e9:.2f}", f"{r_bps / m_bps:.2f}"])  # fmt: skip
    print(table(trows, ["throughput (TCP, 1 stream)", "n", "macvlan Gbit/s", "routed Gbit/s",
                        "routed/macvlan"]))  # fmt: skip
    results.update(
        starts={m: {k: summary(v) for k, v in starts[m].items()} for m in MODES},
        rtt={m: {k: summary(v) for k, v in rtt[m].items()} for m in MODES},
        throughput_bps={m: {k: summary(v) for k, v in bps[m].items()} for m in MODES},
        targets=targets,
    )
    path = write_results("isolation", results)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
