"""Crash test: SIGKILL `up` and `down` at uniformly random points, then repair; no leaks.

Each cycle forks a child from this already-started interpreter (no ~190 ms of Python
start-up and imports in front of the kernel work) that runs `up` then `down` in-process.
The clock starts when the child is about to call `up`; the parent kills it at a point
drawn uniformly from [0, 1.1 times the length of an uninterrupted up + down], so kills land
anywhere in the build, the wait for an address, the state writes and the teardown.
After a kill the workload is finished off either by `down` or by `up` (which must repair
what it finds) followed by `down`; then nothing of it may be left: no namespace, no
state file, no link in mux, no process in its namespace.

The netns tier runs a short version (tests/netns/test_lifecycle.py); the bench the 1000-cycle
one: `.venv/bin/python -m bench.crash [--cycles N]`, in a lab of its own.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from netmux import config, firewall, journal, links, names, nsutil, workload
from netmux.config import HostConfig


@dataclass
class CrashResult:
    cycles: int = 0
    killed: int = 0
    repaired_by_up: int = 0
    cycle_seconds: float = 0.0
    left_by_kill: Counter[str] = field(default_factory=Counter)
    leaks: list[str] = field(default_factory=list)


def _child(host: HostConfig, wl: config.WorkloadConfig, go: int) -> None:
    """In the forked child: signal the start, up, down; never return into the caller."""
    code = 1
    try:
        os.write(go, b"x")
        workload.up(host, wl, (), exec_cmd=False)
        workload.down(host, wl.name)
        code = 0
    except BaseException:
        code = 2
    finally:
        os._exit(code)


def _fork_cycle(host: HostConfig, wl: config.WorkloadConfig, kill_after: float | None) -> bool:
    """One child cycle; True if it was killed before it finished."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        _child(host, wl, w)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    killed = False
    if kill_after is not None:
        time.sleep(kill_after)
        try:
            os.kill(pid, signal.SIGKILL)
            killed = True
        except ProcessLookupError:
            pass
    _, status = os.waitpid(pid, 0)
    if killed and os.WIFSIGNALED(status):
        return True
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise RuntimeError(f"an uninterrupted up + down of {wl.name} failed (status {status})")
    return False


def what_is_left(host: HostConfig, name: str) -> str:
    """A short description of what a kill left: the phase it hit."""
    st = workload.read_state(host, name)
    has_ns = nsutil.is_netns(nsutil.netns_path(name))
    if st is None:
        return "namespace, no state" if has_ns else "nothing"
    phase = str(st.get("phase"))
    if not has_ns:
        return f"{phase} state, no namespace"
    try:
        with links.iproute(name) as ipr:
            has_link = links.link_index(ipr, str(st.get("ifname"))) is not None
    except OSError:
        has_link = False
    return f"{phase} state, namespace" + (", link" if has_link else ", no link")


def leaks(host: HostConfig, name: str) -> list[str]:
    found = []
    if os.path.lexists(nsutil.netns_path(name)):
        found.append(f"namespace {name}")
    if workload.state_path(host, name).exists():
        found.append(f"state of {name}")
    if links.netns_exists(host.mux.netns):
        with links.iproute(host.mux.netns) as mipr:
            if links.link_index(mipr, names.mux_link_name(name)) is not None:
                found.append(f"mux link of {name}")
        found += [f"proxy entry {a}" for a in proxies(host)]  # a routed link's
        table = firewall.routed_table(names.mux_link_name(name))
        listed = firewall.run_nft(host.mux.netns, "list tables netdev") or {}
        if any(t.get("table", {}).get("name") == table for t in listed.get("nftables", [])):
            found.append(f"mux table {table}")
    return found


def proxies(host: HostConfig) -> list[str]:
    """The gateway's proxy NDP entries (only routed workloads make them)."""
    r = subprocess.run(["ip", "-n", host.mux.netns, "-6", "neigh", "show", "proxy", "dev",
                        host.mux.gateway], capture_output=True, text=True, check=False)  # fmt: skip
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def crash_cycles(
    host: HostConfig,
    name: str,
    cycles: int,
    rnd: random.Random,
    repair_share: float = 0.5,
    link: str = "macvlan",
) -> CrashResult:
    """Run `cycles` killed cycles on workload NAME (see the module docstring); `link`:
    "routed" for a routed link (then mux's side must be gone too)."""
    wl = config.workload_from(name, overrides={"link": link})
    res = CrashResult()
    t0 = time.monotonic()
    for _ in range(3):
        _fork_cycle(host, wl, None)
    span = (time.monotonic() - t0) / 3 * 1.1
    t0 = time.monotonic()
    for _ in range(cycles):
        killed = _fork_cycle(host, wl, rnd.uniform(0.0, span))
        res.cycles += 1
        if killed:
            res.killed += 1
            left = what_is_left(host, name)
            res.left_by_kill[left] += 1
            complete = left == "up state, namespace, link"  # `up` rightly says "already up"
            if not complete and rnd.random() < repair_share:
                workload.up(host, wl, (), exec_cmd=False)
                res.repaired_by_up += 1
        workload.down(host, name)
        leaked = leaks(host, name)
        if leaked:
            res.leaks.extend(leaked)
            break
    res.cycle_seconds = (time.monotonic() - t0) / max(res.cycles, 1)
    return res


def report(res: CrashResult) -> str:
    lines = [
        f"{res.cycles} cycles, {res.killed} killed inside up/down, "
        f"{res.repaired_by_up} finished by a repairing `up`, "
        f"{res.cycle_seconds * 1000:.0f} ms per cycle; leaks: {', '.join(res.leaks) or 'none'}",
        "what the kill left (before repair):",
    ]
    for what, n in res.left_by_kill.most_common():
        lines.append(f"  {n:5}  {what}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench import lifecycle

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--seed", default="netmux")
    ap.add_argument(
        "--quick", action="store_true", help="50 cycles (make bench BENCH_ARGS=--quick)"
    )
    ap.add_argument("--link", choices=["macvlan", "routed"], default="macvlan")
    args = ap.parse_args(argv)
    if args.quick:
        args.cycles = 50
    if os.geteuid() != 0:
        print("bench/crash.py: run as root", file=sys.stderr)
        return 1
    journal.set_quiet(True)
    host = lifecycle.setup()
    try:
        rnd = random.Random(args.seed)
        res = crash_cycles(host, "bench-wcrash", args.cycles, rnd, link=args.link)
    finally:
        lifecycle.cleanup(host)
    print(report(res))
    return 1 if res.leaks else 0


if __name__ == "__main__":
    sys.exit(main())
