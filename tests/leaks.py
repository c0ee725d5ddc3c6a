"""What a test run holds on the machine: used before and after tests to find leaks.

Only objects whose names carry the run prefix count (namespaces, links in the root
namespace, mounts, cgroups), plus every child process of the test process (it is a child
subreaper, so orphaned daemons are re-parented to it and counted too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

Snapshot = dict[str, frozenset[str]]


def _netns(prefix: str) -> frozenset[str]:
    try:
        return frozenset(n for n in os.listdir("/run/netns") if n.startswith(prefix))
    except FileNotFoundError:
        return frozenset()


def _links(prefix: str) -> frozenset[str]:
    return frozenset(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))


def _mounts(prefix: str) -> frozenset[str]:
    with open("/proc/self/mountinfo") as f:
        return frozenset(line.split()[4] for line in f if prefix in line.split()[4])


def _cgroups(prefix: str) -> frozenset[str]:
    found = set()
    for root in (
        Path("/sys/fs/cgroup"),
        Path("/sys/fs/cgroup/unified"),
        Path("/sys/fs/cgroup/systemd"),
    ):
        with contextlib.suppress(OSError):
            found.update(str(p) for p in root.iterdir() if p.name.startswith(prefix))
    return frozenset(found)


def children(pid: int | None = None) -> frozenset[str]:
    """Live (non-zombie) child processes of `pid` as 'PID comm'."""
    pid = pid or os.getpid()
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        comm_end = stat.rfind(")")
        fields = stat[comm_end + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(f"{d} {stat[stat.find('(') + 1 : comm_end]}")
    return frozenset(out)


def snapshot(prefix: str) -> Snapshot:
    return {
        "netns": _netns(prefix),
        "link": _links(prefix),
        "mount": _mounts(prefix),
        "cgroup": _cgroups(prefix),
        "process": children(),
    }


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    return [f"{kind} {item}" for kind in after for item in sorted(after[kind] - before[kind])]


def wait_settled(prefix: str, before: Snapshot, timeout: float = 3.0) -> Snapshot:
    """Namespace and process teardown is asynchronous: give it a moment before judging."""
    deadline = time.monotonic() + timeout
    while True:
        _reap()
        after = snapshot(prefix)
        if not diff(before, after) or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def force_cleanup(prefix: str, before: Snapshot) -> None:
    """Remove what leaked so one failing test does not fail the rest."""
    after = snapshot(prefix)
    for item in after["process"] - before["process"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(item.split()[0]), signal.SIGKILL)
    for name in after["link"] - before["link"]:
        subprocess.run(["ip", "link", "del", name], stderr=subprocess.DEVNULL, check=False)
    for name in after["netns"] - before["netns"]:
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL, check=False)
    for mnt in sorted(after["mount"] - before["mount"], reverse=True):
        subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL, check=False)
    for cg in after["cgroup"] - before["cgroup"]:
        with contextlib.suppress(OSError):
            Path(cg).rmdir()
    time.sleep(0.1)
    _reap()
