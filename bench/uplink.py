"""Uplink: lab up with DHCPv6-PD, PD arrival, IPv4 lease, first packet through NAT64, renumbering.

Measured on a lab of its own (netns bench-umux / bench-urtr, uplink benchuu0, paths under
/run/netmux-bench-uplink; never the host's NICs). Each of N rounds:

1. lab up (static)  `lab up` without the upstream's DHCPv6 (the lab's static /64 on gw0):
                    the peer, measured in the same run.
2. lab up (PD)      `lab up` with kea-dhcp6 delegating, dhcpcd in mux, NAT64 (tayga+nft):
                    until the delegated prefix is on gw0. Split into the upstream's
                    daemons and "PD arrival" (dhcpcd start -> prefix on gw0).
3. IPv4 lease       dhcpcd start -> IPv4 default route in mux (DHCPv4 from udhcpd).
4. NAT64 first      a fresh workload fetches http://v4only.isp.test/ through DNS64
                    (resolver workload) + NAT64: curl's connect time of the first request
                    (tayga creates its mapping) and of a second one; the peer is the same
                    fetch over plain IPv4 from mux itself (no translation).
5. renumber         upstream delegates a new /64 -> the workload has an address from it
                    and the old one deprecated (bounded by kea's 2 s renew timer).

Run as root: `.venv/bin/python -m bench.uplink [--rounds N] [--quick]`. Prints a table and
writes bench/results/uplink.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from bench import common
from bench.common import load_config, machine, ms, now, summary, table, write_results
from netmux import config, lab, mux, workload
from netmux.config import HostConfig
from netmux.lab import upstream

BASE = Path("/run/netmux-bench-uplink")

CONFIG = common.lab_config(BASE, "bench-umux", "bench-urtr", "benchuu0", common.NAT64_SECTION)


def host_config() -> HostConfig:
    return load_config(BASE, CONFIG)


def lab_up_static(host: HostConfig) -> float:
    real = upstream.available
    upstream.available = lambda: False  # type: ignore[assignment]
    try:
        t0 = now()
        lab.up(host)
        return now() - t0
    finally:
        upstream.available = real  # type: ignore[assignment]


def dig_aaaa(netns: str, qname: str) -> IPv6Address:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "dig", "+short", "+time=2", "+tries=3",
         "@fd64:cafe::53", qname, "AAAA"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return IPv6Address(out[0])


def curl_connect(netns: str, url: str, resolve: str | None = None) -> float:
    """curl's time_connect (s) for one GET; raises if the page does not arrive."""
    argv = ["ip", "netns", "exec", netns, "curl", "-sS", "-m", "10", "-o", "/dev/null",
            "-w", "%{time_connect}"]  # fmt: skip
    if resolve:
        argv += ["--resolve", resolve]
    r = subprocess.run([*argv, url], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"curl {url} in {netns}: {r.stderr.strip()}")
    return float(r.stdout)


def global_addrs(netns: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "-6", "addr", "show", "dev", "eth0", "scope", "global"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [a for link in json.loads(out) for a in link.get("addr_info", []) if "local" in a]


def renumber_time(host: HostConfig, wl: str, new: IPv6Network, timeout: float = 10) -> float:
    old = host.lab.prefix
    t0 = now()
    upstream.renumber(host, lab.daemon_dir(host), new)
    while now() - t0 < timeout:
        addrs = global_addrs(wl)
        fresh = [a for a in addrs if IPv6Address(a["local"]) in new
                 and a.get("preferred_life_time") != 0]  # fmt: skip
        stale = [a for a in addrs if IPv6Address(a["local"]) in old]
        if fresh and stale and all(a.get("preferred_life_time") == 0 for a in stale):
            return now() - t0
        time.sleep(0.01)
    raise RuntimeError(f"{wl} not renumbered to {new} within {timeout}s")


def one_round(host: HostConfig, i: int) -> dict[str, float]:
    r: dict[str, float] = {}
    common.lab_down(host)
    r["lab_up_static"] = lab_up_static(host)
    common.lab_down(host)
    run = lab.daemon_dir(host)
    t0 = now()
    # lab.up's steps, so that the upstream's share and PD arrival are seen separately
    lab.check(host)
    mux.up(host)
    lab.router_up(host)
    lab.cable_up(host)
    lab.router_routes(host)
    lab.radvd_up(host)
    parts = upstream.lab_up(host, run)
    r["lab_up_pd"] = now() - t0
    r["upstream_daemons"] = parts["upstream"]
    r["pd_arrival"] = parts["pd"]
    r["ipv4_after_lab_up"] = upstream.wait_ipv4(host)
    upstream.resolver_up(host, run)
    wl = f"bu{i}w"
    workload.up(host, config.workload_from(wl), exec_cmd=False)
    qname = f"v4only.{upstream.ZONE}"
    t1 = now()
    synth = dig_aaaa(wl, qname)
    r["dns64_lookup"] = now() - t1
    assert synth in common.NAT64, synth
    resolve = f"{qname}:80:[{synth}]"
    r["nat64_first_connect"] = curl_connect(wl, f"http://{qname}/", resolve)
    r["nat64_second_connect"] = curl_connect(wl, f"http://{qname}/", resolve)
    r["ipv4_direct_connect"] = curl_connect(host.mux.netns, f"http://{upstream.WEB4}/")
    r["renumber"] = renumber_time(host, wl, IPv6Network("2001:db8:0:2::/64"))
    workload.down(host, wl)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    host = host_config()
    samples: dict[str, list[float]] = {}
    info = machine()
    try:
        for i in range(rounds):
            r = one_round(host, i)
            for k, v in r.items():
                samples.setdefault(k, []).append(v)
            print(f"round {i + 1}/{rounds}: " + ", ".join(f"{k} {ms(v)} ms" for k, v in r.items()),
                  file=sys.stderr)  # fmt: skip
    finally:
        common.lab_down(host)
    stats = {k: summary(v) for k, v in samples.items()}
    rows = [[k, s["n"], ms(s["median"]), ms(s["p95"]), ms(s["min"]), ms(s["max"])]
            for k, s in stats.items()]  # fmt: skip
    print(table(rows, ["what (ms)", "n", "median", "p95", "min", "max"]))
    med = {k: float(s["median"]) for k, s in stats.items()}
    ratios = {
        "lab_up_pd / lab_up_static": med["lab_up_pd"] / med["lab_up_static"],
        "nat64_first_connect / ipv4_direct_connect": med["nat64_first_connect"]
        / max(med["ipv4_direct_connect"], 1e-6),
        "nat64_second_connect / ipv4_direct_connect": med["nat64_second_connect"]
        / max(med["ipv4_direct_connect"], 1e-6),
    }
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    path = write_results("uplink", {"machine": info, "rounds": rounds, "stats": stats,
                                    "ratios": ratios, "samples": samples})  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
