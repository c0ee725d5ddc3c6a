"""`netmux mux up|down`: mux with what hangs off it, above the modules it orchestrates.

mux.py makes and removes the namespace and its links and refuses to remove it while
workloads use it; here `down --force` takes the workloads down first (workload.py) and the
lab's daemons in mux stop with it (lab), and `up --watch` runs the NIC watcher with the
follower that re-addresses routed workloads (routed.py: routed links get no RAs).
"""

from __future__ import annotations

import argparse
import signal
import threading

from . import journal, lab, mux, routed, sd, workload
from .config import HostConfig


def down(host: HostConfig, force: bool = False) -> bool:
    """mux.down, after the workloads (`force`: else it refuses while any exists) and the
    lab's daemons in mux. Returns True if there was something to remove."""
    if force:
        workload.down_all(host)
    elif mux.workloads(host):
        return mux.down(host)  # refuses, naming them
    lab.stop_daemons_in_mux(host)
    return mux.down(host)


def cmd_mux(args: argparse.Namespace, host: HostConfig) -> int:
    if args.action == "down":
        down(host, force=args.force)
        return 0
    mux.up(host)
    if not getattr(args, "watch", False):
        return 0
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def ready() -> None:
        sd.notify(ready="1", status=f"mux {host.mux.netns} up; watching for uplink NICs")
        journal.info(f"mux {host.mux.netns} ready; watching for NICs", netns=host.mux.netns)

    follower = threading.Thread(target=routed.follow, args=(host, stop), name="routed", daemon=True)
    follower.start()
    mux.watch_nics(host, stop, ready)
    sd.notify(stopping="1")
    follower.join(timeout=2)
    return 0
