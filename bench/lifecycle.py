"""Workload lifecycle: `netmux up` → usable global address + default route, `down` → gone.

Measured in one run, on a lab of its own (netns bench-mux / bench-router, uplink
benchup0, paths under /run/netmux-bench; never the host's NICs):

1. cycle   N runs, interleaved: netmux up/down in-process (workload module) and the CNI
           macvlan plugin (Debian containernetworking-plugins) on the same parent host0:
           netns add + ADD / DEL + netns del, without IPAM (the address then comes by
           SLAAC from the same radvd, with kernel defaults: measured until usable in the
           first --cni-runs) and with host-local IPv6 IPAM (the plugin then waits for DAD).
2. cli     the same netmux cycle end to end through the `netmux` command (Python start-up
           and imports included).
3. scale   start workloads one after another up to the largest N (they stay running):
           start median of the last 10 at N = 100 and 500 vs the start at N = 1.
4. memory  M workloads started as `netmux up NAME -- sleep 3600` (the CLI execs CMD):
           which processes exist afterwards, their PSS against M plain `sleep`s, and the
           kernel memory a workload costs (MemAvailable delta, approximate).

Run as root: `.venv/bin/python -m bench.lifecycle` (or `make bench`); `--quick` for a
smoke run. Prints tables and writes bench/results/lifecycle.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from bench import common
from bench.common import (
    compile_checkout,
    load_config,
    machine,
    ms,
    now,
    summary,
    table,
    write_results,
)
from netmux import config, journal, lab, links, nsutil, workload
from netmux.config import HostConfig

BASE = Path("/run/netmux-bench")
CNI_PLUGIN = Path("/usr/lib/cni/macvlan")
NETMUX = [sys.executable, "-m", "netmux.cli"]

CONFIG = common.lab_config(BASE, "bench-mux", "bench-router", "benchup0", common.DNS_SECTION)


# --- set-up -----------------------------------------------------------------------------


def setup() -> HostConfig:
    host = load_config(BASE, CONFIG)
    cleanup(host)
    lab.up(host)
    return host


def cleanup(host: HostConfig) -> None:
    common.lab_down(host, "bench-w")


# --- one netmux cycle and one CNI cycle --------------------------------------------------


def netmux_cycle(host: HostConfig, name: str) -> tuple[float, float]:
    t0 = now()
    workload.up(host, config.workload_from(name), exec_cmd=False)
    t1 = now()
    check_usable(host, name)
    t2 = now()
    workload.down(host, name)
    t3 = now()
    if nsutil.netns_path(name).exists():
        raise RuntimeError(f"{name}: namespace still there after down")
    return t1 - t0, t3 - t2


def check_usable(host: HostConfig, name: str) -> None:
    st = workload.status(host, name)
    glob = [IPv6Address(a.split("/")[0]) for a in st["addresses"]["global"]]
    if not st["default_route"] or not any(a in host.lab.prefix for a in glob):
        raise RuntimeError(f"{name}: not usable after up: {st}")


def cni_conf(host: HostConfig, ipam: bool) -> str:
    """The CNI macvlan plugin on mux's host0; with host-local IPv6 IPAM or none (SLAAC)."""
    p = host.lab.prefix
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "netmux-bench",
        "type": "macvlan",
        "master": host.mux.parent,
        "mode": "bridge",
        "ipam": {},
    }
    if ipam:
        conf["ipam"] = {
            "type": "host-local",
            "dataDir": str(BASE / "cni"),
            "ranges": [
                [
                    {
                        "subnet": str(p),
                        "rangeStart": str(p.network_address + 0x1000),
                        "rangeEnd": str(p.network_address + 0x1FFF),
                        "gateway": str(p.network_address + 1),
                    }
                ]
            ],
            "routes": [{"dst": "::/0"}],
        }
    return json.dumps(conf)


def cni(host: HostConfig, command: str, name: str, conf: str) -> dict[str, Any]:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": name,
        "CNI_NETNS": str(nsutil.netns_path(name)),
        "CNI_IFNAME": host.workload.ifname,
        "CNI_PATH": str(CNI_PLUGIN.parent),
    }
    mux_ns = str(nsutil.netns_path(host.mux.netns))
    r = subprocess.run(
        ["nsenter", f"--net={mux_ns}", "--", str(CNI_PLUGIN)],
        input=conf,
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode != 0:
        raise RuntimeError(f"CNI {command} failed: {r.stdout} {r.stderr}")
    return json.loads(r.stdout) if r.stdout.strip() else {}


def cni_cycle(
    host: HostConfig, name: str, conf: str, wait: bool
) -> tuple[float, float, float | None]:
    """(netns add + ADD returned, DEL + netns del, netns add → address usable or None)."""
    t0 = now()
    links.create_netns(name)
    cni(host, "ADD", name, conf)
    t1 = now()
    usable: float | None = None
    if wait:
        with links.iproute(name) as ipr:
            deadline = t1 + 8.0
            while now() < deadline:
                if links.ready(links.link_state(ipr, host.workload.ifname), "global"):
                    usable = now() - t0
                    break
                time.sleep(0.002)
    t2 = now()
    cni(host, "DEL", name, conf)
    links.remove_netns(name)
    t3 = now()
    return t1 - t0, t3 - t2, usable


def cycles(host: HostConfig, runs: int, cni_runs: int, with_cni: bool) -> dict[str, Any]:
    """Interleaved: netmux, CNI without IPAM (every run; waiting for SLAAC in the first
    `cni_runs`), CNI with host-local IPv6 IPAM (the first `cni_runs`)."""
    plain, ipam = cni_conf(host, False), cni_conf(host, True)
    up, down, cadd, cdel, cusable, iadd, idel = [], [], [], [], [], [], []
    for i in range(runs):
        u, d = netmux_cycle(host, "bench-w0")
        up.append(u)
        down.append(d)
        if not with_cni:
            continue
        a, dl, us = cni_cycle(host, "bench-wc0", plain, wait=i < cni_runs)
        cadd.append(a)
        cdel.append(dl)
        if us is not None:
            cusable.append(us)
        if i < cni_runs:
            a, dl, _ = cni_cycle(host, "bench-wc1", ipam, wait=False)
            iadd.append(a)
            idel.append(dl)
    out: dict[str, Any] = {"netmux_up": summary(up), "netmux_down": summary(down)}
    if with_cni:
        out |= {
            "cni_add": summary(cadd),
            "cni_del": summary(cdel),
            "cni_slaac_usable": summary(cusable),
            "cni_slaac_usable_missing": min(runs, cni_runs) - len(cusable),
            "cni_ipam_add": summary(iadd),
            "cni_ipam_del": summary(idel),
        }
    return out


def cli_cycles(host: HostConfig, runs: int) -> dict[str, Any]:
    base = [*NETMUX, "--config", host.source, "-q"]
    up, down = [], []
    for _ in range(runs):
        t0 = now()
        subprocess.run([*base, "up", "bench-w1"], check=True, capture_output=True)
        t1 = now()
        check_usable(host, "bench-w1")
        t2 = now()
        subprocess.run([*base, "down", "bench-w1"], check=True, capture_output=True)
        t3 = now()
        up.append(t1 - t0)
        down.append(t3 - t2)
    t0 = now()
    subprocess.run([*base, "--version"], check=True, capture_output=True)
    return {"up": summary(up), "down": summary(down), "cli_noop": now() - t0}


# --- scale --------------------------------------------------------------------------------


class KernelMemory:
    """Kernel memory charged to this process's own memory cgroup (v1 kmem or v2), so that
    other processes on a busy machine do not count; MemAvailable is the fallback."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.parent: Path | None = None
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrl, path = line.split(":", 2)
            root = {"memory": "/sys/fs/cgroup/memory", "": "/sys/fs/cgroup/unified"}.get(ctrl)
            if root is None:
                continue
            parent = Path(root + path)
            child = parent / f"netmux-bench-{os.getpid()}"
            try:
                child.mkdir()
                (child / "cgroup.procs").write_text(f"{os.getpid()}\n")
            except OSError:
                with contextlib.suppress(OSError):
                    child.rmdir()
                continue
            self.dir, self.parent = child, parent
            break

    def usage(self) -> int:
        if self.dir is not None:
            for name in ("memory.kmem.usage_in_bytes", "memory.current"):
                f = self.dir / name
                if f.exists():
                    return int(f.read_text())
        return -mem_available()

    @property
    def source(self) -> str:
        return "memory cgroup of the bench" if self.dir is not None else "MemAvailable"

    def close(self) -> None:
        if self.dir is not None and self.parent is not None:
            with contextlib.suppress(OSError):
                (self.parent / "cgroup.procs").write_text(f"{os.getpid()}\n")
                self.dir.rmdir()
            self.dir = None


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


NEIGH = "/proc/sys/net/ipv6/neigh/default/gc_thresh"
WINDOW = 25  # starts per tier: N=k is the median of starts k-24..k


def neigh_limits() -> tuple[int, int]:
    """The IPv6 neighbour table's gc_thresh2/3: one table for all namespaces together."""
    return int(Path(f"{NEIGH}2").read_text()), int(Path(f"{NEIGH}3").read_text())


def scale(host: HostConfig, tiers: list[int], raise_limits: bool) -> dict[str, Any]:
    """Start workloads one after another up to max(tiers); each stays running.

    Every workload holds ~2 IPv6 neighbour entries (its router in its namespace, itself on
    gw0 in mux) and the kernel's neighbour table is shared by all namespaces: at the
    default gc_thresh3 = 1024 it overflows near 450-500 workloads (then RAs can no longer
    be sent). --raise-limits raises gc_thresh2/3 for the run (restored afterwards)."""
    top = max(tiers)
    starts: list[float] = []
    out: dict[str, Any] = {}
    saved = neigh_limits()
    out["neigh_gc_thresh2_3"] = list(saved)
    if raise_limits:
        want = (max(saved[0], 2 * top + 512), max(saved[1], 4 * top + 1024))
        Path(f"{NEIGH}2").write_text(f"{want[0]}\n")
        Path(f"{NEIGH}3").write_text(f"{want[1]}\n")
        out["neigh_gc_thresh2_3_raised_to"] = list(want)
    kmem = KernelMemory()
    mem0 = kmem.usage()
    try:
        for i in range(top):
            t0 = now()
            try:
                workload.up(host, config.workload_from(f"bench-w{i + 10}"), exec_cmd=False)
            except Exception as e:  # measured what works; say where and why it stopped
                out["failed_at"] = i + 1
                out["error"] = str(e)
                break
            starts.append(now() - t0)
        if starts:
            check_usable(host, f"bench-w{len(starts) + 9}")
            out["kernel_bytes_per_workload"] = (kmem.usage() - mem0) / len(starts)
            out["kernel_memory_source"] = kmem.source
    finally:
        t0 = now()
        for i in range(len(starts)):
            workload.down(host, f"bench-w{i + 10}")
        out["down_all_seconds"] = now() - t0
        kmem.close()
        if raise_limits:
            Path(f"{NEIGH}2").write_text(f"{saved[0]}\n")
            Path(f"{NEIGH}3").write_text(f"{saved[1]}\n")
    out["starts"] = [round(s, 5) for s in starts]
    for n in tiers:
        if n <= len(starts):
            out[f"N={n}"] = summary(starts[max(0, n - WINDOW) : n])
    return out


# --- memory ---------------------------------------------------------------------------------


def pss(pid: int) -> int:
    """Proportional set size of one process in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def procs_in_netns(name: str) -> list[int]:
    target = os.stat(nsutil.netns_path(name)).st_ino
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{d}/ns/net").st_ino == target:
                    found.append(int(d))
    return found


def netmux_processes(marker: str) -> list[str]:
    """Processes whose command line names our config: a resident netmux would show here."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if marker in cmd:
                    out.append(f"{d} {cmd.strip()}")
    return out


def memory(host: HostConfig, m: int) -> dict[str, Any]:
    sleep = shutil.which("sleep") or "/bin/sleep"
    plain = [subprocess.Popen([sleep, "3600"]) for _ in range(m)]
    time.sleep(0.3)
    plain_pss = sum(pss(p.pid) for p in plain) / m
    plain_rss = sum(rss(p.pid) for p in plain) / m
    for p in plain:
        p.kill()
        p.wait()
    names = [f"bench-w{1000 + i}" for i in range(m)]
    started: list[subprocess.Popen[bytes]] = []
    base = [*NETMUX, "--config", host.source, "-q", "up"]
    try:
        for name in names:
            started.append(
                subprocess.Popen([*base, name, "--", sleep, "3600"], stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(_comm(p.pid) == "sleep" for p in started):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        per_ns = {n: procs_in_netns(n) for n in names}
        comms = sorted({_comm(pid) for pids in per_ns.values() for pid in pids})
        nprocs = sum(len(p) for p in per_ns.values())
        wl_pss = sum(pss(pid) for pids in per_ns.values() for pid in pids) / m
        wl_rss = sum(rss(pid) for pids in per_ns.values() for pid in pids) / m
        resident = netmux_processes(str(host.source))
        same_pid = all(per_ns[n] == [p.pid] for n, p in zip(names, started, strict=True))
    finally:
        for p in started:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            p.wait()
        for name in names:
            workload.down(host, name)
    return {
        "workloads": m,
        "processes_in_workload_netns": nprocs,
        "process_names": comms,
        "workload_process_is_the_launched_pid": same_pid,
        "netmux_processes_resident": len([r for r in resident if "sleep" not in r]),
        "pss_per_workload_bytes": wl_pss,
        "pss_per_plain_sleep_bytes": plain_pss,
        "rss_per_workload_bytes": wl_rss,
        "rss_per_plain_sleep_bytes": plain_rss,
        "overhead_pss_bytes": wl_pss - plain_pss,
    }


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# --- report ---------------------------------------------------------------------------------


def report(res: dict[str, Any]) -> str:
    c = res["cycle"]
    rows: list[list[object]] = []

    def row(label: str, s: dict[str, Any]) -> None:
        rows.append([label, s.get("n", 0), ms(s.get("median")), ms(s.get("p95")), ms(s.get("max"))])

    row("netmux up → usable global + default route (in-process)", c["netmux_up"])
    row("netmux down → gone (in-process)", c["netmux_down"])
    if "cli" in res:
        row("netmux up (CLI, end to end)", res["cli"]["up"])
        row("netmux down (CLI, end to end)", res["cli"]["down"])
    if "cni_add" in c:
        row("CNI macvlan, no IPAM: netns add + ADD returned", c["cni_add"])
        row("CNI macvlan, no IPAM: → SLAAC address + route usable", c["cni_slaac_usable"])
        row("CNI macvlan, no IPAM: DEL + netns del", c["cni_del"])
        row("CNI macvlan + host-local IPv6: netns add + ADD", c["cni_ipam_add"])
        row("CNI macvlan + host-local IPv6: DEL + netns del", c["cni_ipam_del"])
    out = [table(rows, ["lifecycle", "n", "median ms", "p95 ms", "max ms"])]
    if "cni_add" in c:
        nm, add = c["netmux_up"]["median"], c["cni_add"]["median"]
        out.append(f"ratio (medians) netmux up / CNI ADD returned: {nm / add:.2f}")
        for key, what in (
            ("cni_slaac_usable", "CNI SLAAC usable"),
            ("cni_ipam_add", "CNI+IPAM ADD"),
        ):
            if c[key].get("n"):
                out.append(f"ratio (medians) netmux up / {what}: {nm / c[key]['median']:.2f}")
    if "scale" in res:
        s = res["scale"]
        one = c["netmux_up"]
        first = one["median"]
        srows: list[list[object]] = [
            ["N=1 (the cycles: nothing else running)", one["n"], ms(first), ms(one["p95"]), "1.00"]
        ]
        keys = sorted((k for k in s if k.startswith("N=")), key=lambda k: int(k[2:]))
        for key in [k for k in keys if k != "N=1"]:
            med = s[key]["median"]
            srows.append([key, s[key]["n"], ms(med), ms(s[key]["p95"]), f"{med / first:.2f}"])
        out.append("")
        out.append(table(srows, ["running workloads", "starts", "median ms", "p95 ms", "vs N=1"]))
        if "failed_at" in s:
            out.append(
                f"workload {s['failed_at']} failed to start: {s['error']} (IPv6 neighbour "
                f"table gc_thresh2/3 = {s['neigh_gc_thresh2_3']}; see --raise-limits)"
            )
        if "neigh_gc_thresh2_3_raised_to" in s:
            out.append(
                f"(neighbour table gc_thresh2/3 raised from {s['neigh_gc_thresh2_3']} to "
                f"{s['neigh_gc_thresh2_3_raised_to']} for this run, then restored)"
            )
        out.append(
            f"(N=k: the {WINDOW} starts up to the k-th, all others still running; tearing "
            f"all down took {s['down_all_seconds']:.1f}s; kernel memory per workload "
            f"(netns + link, {s.get('kernel_memory_source')}) ≈ "
            f"{s.get('kernel_bytes_per_workload', 0) / 1024:.0f} KiB)"
        )
    if "memory" in res:
        m = res["memory"]
        out.append("")
        out.append(
            f"memory, {m['workloads']} workloads `netmux up NAME -- sleep 3600`: "
            f"{m['processes_in_workload_netns']} processes in their namespaces "
            f"({', '.join(m['process_names'])}; the launched PID itself: "
            f"{m['workload_process_is_the_launched_pid']}), resident netmux processes: "
            f"{m['netmux_processes_resident']}"
        )
        out.append(
            f"PSS per workload {m['pss_per_workload_bytes'] / 1024:.0f} KiB vs a plain sleep "
            f"{m['pss_per_plain_sleep_bytes'] / 1024:.0f} KiB → overhead "
            f"{m['overhead_pss_bytes'] / 1024:.0f} KiB (no netmux process stays resident)"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50, help="in-process and CNI cycles (≥ 50)")
    ap.add_argument("--cni-runs", type=int, default=10, help="CNI runs that wait for DAD")
    ap.add_argument("--cli-runs", type=int, default=50, help="cycles through the CLI")
    ap.add_argument("--scale", default="1,100,500", help="tiers of running workloads")
    ap.add_argument(
        "--raise-limits",
        action="store_true",
        help="raise the (global) IPv6 neighbour table limits for the scale run, then restore",
    )
    ap.add_argument("--memory", type=int, default=50, help="workloads for the memory check")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few of everything")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/lifecycle.py: run as root", file=sys.stderr)
        return 1
    if args.quick:
        args.runs, args.cni_runs, args.cli_runs, args.scale, args.memory = 5, 2, 3, "1,10,20", 5
    tiers = sorted({int(x) for x in args.scale.split(",") if x})
    compile_checkout()
    journal.set_quiet(True)
    with_cni = CNI_PLUGIN.exists()
    res: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    host = setup()
    try:
        t0 = now()
        res["cycle"] = cycles(host, args.runs, args.cni_runs, with_cni)
        if not with_cni:
            res["cycle"]["cni_missing"] = f"{CNI_PLUGIN} not installed"
        if args.cli_runs:
            res["cli"] = cli_cycles(host, args.cli_runs)
        res["scale"] = scale(host, tiers, args.raise_limits)
        if args.memory:
            res["memory"] = memory(host, args.memory)
        res["seconds"] = now() - t0
    finally:
        cleanup(host)
        shutil.rmtree(BASE, ignore_errors=True)
    text = report(res)
    print(text)
    path = write_results("lifecycle", res)
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
