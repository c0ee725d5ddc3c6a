"""Small helpers for the benches: timing, statistics, a text table, the JSON results file.

Benches measure; they never assert budgets (tests do not time things). Each writes
bench/results/NAME.json (gitignored) and prints a table that can be pasted into
bench/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

from netmux import config
from netmux.config import HostConfig

RESULTS = Path(__file__).resolve().parent / "results"


def now() -> float:
    return time.perf_counter()


def summary(samples: Sequence[float]) -> dict[str, float | int]:
    """n, median, p95, min, max, mean (seconds in, seconds out)."""
    xs = sorted(samples)
    if not xs:
        return {"n": 0}
    p95 = xs[min(len(xs) - 1, max(0, round(0.95 * len(xs)) - 1))]
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "p95": p95,
        "min": xs[0],
        "max": xs[-1],
        "mean": statistics.fmean(xs),
    }


def ms(v: float | int | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain-text table (left-aligned first column, right-aligned others)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def load_config(base: Path, text: str) -> HostConfig:
    """Write a bench's own netmux.toml under `base` (its namespaces and paths) and load it."""
    base.mkdir(parents=True, exist_ok=True)
    path = base / "netmux.toml"
    path.write_text(text)
    return config.load_host(path)


NAT64 = IPv6Network("2001:db8:64::/96")  # the lab benches' NAT64 prefix
NAT64_SECTION = f'[nat64]\nprefix = "{NAT64}"\npool = "198.51.100.0/24"\n'
DNS_SECTION = '[dns]\nhostname = "bench"\n'


def lab_config(base: Path, mux: str, router: str, uplink: str, section: str) -> str:
    """A lab bench's netmux.toml: its own mux and lab router namespaces, the lab's uplink
    (UPLINK ends in 0: mux takes every link of its stem), paths under `base`, and `section`
    (NAT64_SECTION, DNS_SECTION: the TOML the bench needs on top)."""
    return f"""
[mux]
netns = "{mux}"
uplinks = ["{uplink.rstrip("0123456789")}*"]
[lab]
router_netns = "{router}"
uplink = "{uplink}"
{section}[paths]
state_dir = "{base}/state"
run_dir = "{base}/run"
workloads_dir = "{base}/workloads"
"""


def netns_named(prefix: str) -> list[str]:
    """The namespaces whose names start with `prefix`: what a bench killed halfway left."""
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix))
    except FileNotFoundError:
        return []


def lab_down(host: HostConfig, prefix: str = "", force: bool = False) -> None:
    """Every workload a lab bench left (its state directory's, and with `prefix` the
    namespaces so named but for mux and the router), then the lab."""
    from netmux import lab, workload

    names = set(workload.known(host)) | (set(netns_named(prefix)) if prefix else set())
    for name in sorted(names - {host.mux.netns, host.lab.router_netns}):
        workload.down(host, name)
    lab.down(host, force=force)


class Asker:
    """A UDP socket inside a namespace: ask for AAAA without spawning `dig`."""

    def __init__(self, ns: str, server: str, timeout: float) -> None:
        """`timeout`: how long `wait` waits unless told."""
        from netmux import nsutil

        fam = socket.AF_INET6 if ":" in server else socket.AF_INET
        self.server = server
        self.timeout = timeout
        self.sock = nsutil.run_in_netns(ns, lambda: socket.socket(fam, socket.SOCK_DGRAM))

    def aaaa(self, name: str) -> set[str]:
        import dns.message
        import dns.query

        q = dns.message.make_query(name, "AAAA")
        try:
            r = dns.query.udp(q, self.server, timeout=0.5, sock=self.sock)
        except Exception:
            return set()
        return {rd.to_text() for rrset in r.answer for rd in rrset}

    def wait(
        self, name: str, pred: Callable[[set[str]], bool], timeout: float | None = None
    ) -> float:
        """Seconds until the answer satisfies `pred`; NaN after the timeout."""
        limit = self.timeout if timeout is None else timeout
        t0 = now()
        while not pred(self.aaaa(name)):
            if now() - t0 > limit:
                return float("nan")
            time.sleep(0.002)
        return now() - t0


def compile_checkout() -> None:
    """Byte-compile netmux as the package does at install (dh_python3, pip), so that a
    command's start-up is measured as installed: with PYTHONDONTWRITEBYTECODE set (as in
    some CI shells), every start would otherwise compile each module anew (~30 ms)."""
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "netmux"), quiet=1)
