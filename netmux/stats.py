"""`netmux stats` and `netmux top`: per-workload traffic, denylist size, auto-denials.

Counters come from the kernel: each workload link's IFLA_STATS64 (netlink, inside the
workload's namespace), the per-port named counters of its firewall, and mux's guard
table. Rates are the difference of two samples `interval` seconds apart. Sampling and
formatting are separate so the formatting (text, JSON, Prometheus textfile) is pure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import denylist, files, firewall, links, state
from .config import HostConfig
from .errors import NetmuxError, UsageError

FIELDS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")


@dataclass(frozen=True)
class Sample:
    name: str
    ifname: str
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    t: float


def link_stats(ipr: Any, ifname: str) -> dict[str, int] | None:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return None
    link = ipr.get_links(found[0])[0]
    st = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS")
    if st is None:
        return None
    return {k: int(st[k]) for k in FIELDS}


def sample_one(host: HostConfig, name: str) -> Sample | None:
    st = state.read_state(host, name) or {}
    ifname = str(st.get("ifname") or host.workload.ifname)
    if not links.netns_exists(name):
        return None
    try:
        with links.iproute(name) as ipr:
            counters = link_stats(ipr, ifname)
    except OSError:
        return None  # went down while we looked
    if counters is None:
        return None
    return Sample(name, ifname, t=time.monotonic(), **counters)


def sample(host: HostConfig) -> dict[str, Sample]:
    out = {}
    for name in state.known(host):
        s = sample_one(host, name)
        if s:
            out[name] = s
    return out


def rates(a: Sample, b: Sample) -> dict[str, float]:
    """Per-second rates between two samples of one link. Pure."""
    dt = b.t - a.t
    if dt <= 0:
        return {}
    return {f"{k}_per_s": max(0.0, (getattr(b, k) - getattr(a, k)) / dt) for k in FIELDS}


def denylist_info(host: HostConfig) -> dict[str, int] | None:
    """Size (manual + automatic) and auto-denial packets; None when mux is not up."""
    try:
        found = denylist.entries(host)
        return {
            "size": len(found),
            "manual": sum(1 for d in found if d.source == "manual"),
            "auto": sum(1 for d in found if d.source == "auto"),
            "auto_denial_packets": denylist.auto_denials(host),
        }
    except NetmuxError:
        return None


def report(host: HostConfig, interval: float = 1.0) -> dict[str, Any]:
    first = sample(host)
    if interval > 0 and first:
        time.sleep(interval)
    second = sample(host) if interval > 0 else first
    rows = []
    for name, b in sorted(second.items()):
        row: dict[str, Any] = asdict(b)
        del row["t"]
        if name in first and interval > 0:
            row.update(rates(first[name], b))
        row["ports"] = firewall.port_counters(name)
        rows.append(row)
    from . import renumber

    prefixes = renumber.prefix_report(host)
    return {"workloads": rows, "denylist": denylist_info(host), "prefixes": prefixes}


def prometheus(rep: dict[str, Any]) -> str:
    """node-exporter textfile format. Pure."""
    lines = []
    for k in FIELDS:
        metric = f"netmux_workload_{k}_total"
        lines.append(f"# TYPE {metric} counter")
        lines += [f'{metric}{{workload="{r["name"]}"}} {r[k]}' for r in rep["workloads"]]
    lines.append("# TYPE netmux_port_packets_total counter")
    for r in rep["workloads"]:
        for port, c in sorted(r["ports"].items()):
            lines.append(
                f'netmux_port_packets_total{{workload="{r["name"]}",port="{port}"}} {c["packets"]}'
            )
    d = rep.get("denylist")
    if d:
        lines += [
            "# TYPE netmux_denylist_size gauge",
            f"netmux_denylist_size {d['size']}",
            "# TYPE netmux_denylist_auto gauge",
            f"netmux_denylist_auto {d['auto']}",
            "# TYPE netmux_auto_denial_packets_total counter",
            f"netmux_auto_denial_packets_total {d['auto_denial_packets']}",
        ]
    pre = rep.get("prefixes") or {}
    cur, prev = pre.get("current", []), pre.get("previous", [])
    if cur or prev:
        lines.append("# TYPE netmux_prefix_info gauge")
        lines += [f'netmux_prefix_info{{prefix="{c["prefix"]}"}} 1' for c in cur]
        for key, metric in (
            ("age_seconds", "netmux_prefix_age_seconds"),
            ("preferred_seconds", "netmux_prefix_preferred_seconds"),
            ("valid_seconds", "netmux_prefix_valid_seconds"),
        ):
            lines.append(f"# TYPE {metric} gauge")
            lines += [
                f'{metric}{{prefix="{c["prefix"]}"}} {c[key]}' for c in cur if c[key] is not None
            ]
        metric = "netmux_prefix_deprecated_timestamp_seconds"
        lines.append(f"# TYPE {metric} gauge")
        lines += [f'{metric}{{prefix="{p["prefix"]}"}} {p["deprecated_at"]}' for p in prev]
    return "\n".join(lines) + "\n"


def _human(n: float, unit: str = "") -> str:
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{prefix}{unit}" if not prefix else f"{n:.1f}{prefix}{unit}"
        n /= 1000
    return f"{n:.1f}P{unit}"


def text(rep: dict[str, Any]) -> str:
    """A table for people. Pure."""
    head = f"{'WORKLOAD':<16}{'RX':>9}{'TX':>9}{'RX/s':>10}{'TX/s':>10}{'RXpk/s':>9}{'TXpk/s':>9}"
    lines = [head]
    for r in rep["workloads"]:
        lines.append(
            f"{r['name']:<16}{_human(r['rx_bytes'], 'B'):>9}{_human(r['tx_bytes'], 'B'):>9}"
            f"{_human(r.get('rx_bytes_per_s', 0) * 8, 'b'):>10}"
            f"{_human(r.get('tx_bytes_per_s', 0) * 8, 'b'):>10}"
            f"{_human(r.get('rx_packets_per_s', 0)):>9}{_human(r.get('tx_packets_per_s', 0)):>9}"
        )
    d = rep.get("denylist")
    if d:
        lines.append(
            f"denylist: {d['size']} ({d['manual']} manual, {d['auto']} automatic); "
            f"auto-denial packets: {d['auto_denial_packets']}"
        )
    else:
        lines.append("denylist: (mux is not up)")
    return "\n".join(lines) + "\n"


def cmd_stats(args: argparse.Namespace, host: HostConfig) -> int:
    interval = getattr(args, "interval", 1.0)
    if interval < 0:
        raise UsageError(f"stats: --interval {interval} is not allowed; 0 or more seconds")
    rep = report(host, interval)
    if getattr(args, "prometheus", None):
        path = Path(args.prometheus)
        if not path.parent.is_dir():
            raise UsageError(f"stats: --prometheus {path}: {path.parent} is not a directory")
        files.write_atomic(path, prometheus(rep))
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=True))
    else:
        sys.stdout.write(text(rep))
    return 0


def cmd_top(args: argparse.Namespace, host: HostConfig) -> int:
    interval = args.interval
    if interval <= 0:
        raise UsageError(f"top: --interval {interval} is not allowed; more than 0 seconds")
    prev = sample(host)
    n = 0
    with contextlib.suppress(KeyboardInterrupt):
        while not args.count or n < args.count:
            time.sleep(interval)
            cur = sample(host)
            rows = []
            for name, b in sorted(cur.items()):
                row: dict[str, Any] = asdict(b)
                if name in prev:
                    row.update(rates(prev[name], b))
                rows.append(row)
            prev = cur
            rep = {"workloads": rows, "denylist": denylist_info(host)}
            clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(f"{clear}netmux top  {stamp}  every {interval:g}s\n{text(rep)}")
            sys.stdout.flush()
            n += 1
    return 0
