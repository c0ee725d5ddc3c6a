"""A VM workload: `netmux up --vm` → the guest's address seen by netmux → AAAA answered.

The real guest of the vm test tier (tests/guest.py: Debian's cloud kernel + busybox, built
once into /var/cache/netmux-test) boots under QEMU/TCG on a macvtap, in a mux of its own
with radvd and a static prefix (tests/muxfix.py), with the test tier's phonebook stack
(tests/phonebookfix.py: knotd, a private D-Bus, phonebookd). Each run measures from the
start of `netmux up NAME --vm -- qemu-system-x86_64 ...` (the CLI) to

1. console  the guest itself prints its global address (its SLAAC is done): the floor;
2. seen     phonebookd has learned the address from the guest's NDP (what `netmux
            status` shows as `guest`);
3. aaaa     knotd answers NAME.HOST.DOMAIN AAAA with it.

then QEMU is killed and the workload brought down. TCG is slow (no KVM here): the time is
the guest's boot, not netmux's.

Run as root: `.venv/bin/python -m bench.vm [--runs N] [--quick]`. Prints a table and
writes bench/results/vm.json.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from bench.common import machine, ms, now, summary, table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netmux.phonebook import client
from tests import guest, muxfix
from tests.phonebookfix import PUBLIC, Stack

DNS_NS = "bench-vmdns"
TIMEOUT = 120.0


def one(env: muxfix.MuxEnv, stack: Stack, image: guest.Guest, i: int) -> dict[str, float]:
    name = env.name(f"v{i}")
    log = env.tmp / f"{name}.console"
    prefix = env.host.mux.static_addresses[0].network
    penv = env.env()
    penv["DBUS_SYSTEM_BUS_ADDRESS"] = stack.bus
    t0 = now()
    p = subprocess.Popen(env.argv("up", name, "--vm", "--", *guest.qemu_argv(image, name, log)),
                         env=penv, stderr=subprocess.DEVNULL)  # fmt: skip
    out: dict[str, float] = {}
    try:
        while len(out) < 3:
            if now() - t0 > TIMEOUT or p.poll() is not None:
                raise RuntimeError(f"{name}: no address within {TIMEOUT}s ({out})")
            if "console" not in out and any(IPv6Address(a) in prefix for a in guest.addresses(log)):
                out["console"] = now() - t0
            if "seen" not in out:
                seen = client.published_addresses(name, address=stack.bus)
                if any(IPv6Address(a) in prefix for a in seen):
                    out["seen"] = now() - t0
            if "aaaa" not in out and any(
                IPv6Address(a) in prefix for a in stack.dig(f"{name}.{PUBLIC}").split()
            ):
                out["aaaa"] = now() - t0
            time.sleep(0.02)
    finally:
        p.kill()
        p.wait()
        env.netmux("down", name, check=False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="2 runs")
    args = ap.parse_args(argv)
    runs = 2 if args.quick else args.runs
    image = guest.cached()
    subprocess.run(["ip", "netns", "del", DNS_NS], stderr=subprocess.DEVNULL, check=False)
    subprocess.run(["ip", "netns", "add", DNS_NS], check=True)
    subprocess.run(["ip", "-n", DNS_NS, "link", "set", "lo", "up"], check=True)
    samples: dict[str, list[float]] = {"console": [], "seen": [], "aaaa": []}
    stack = None
    try:
        stack = Stack(DNS_NS)
        with (
            tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp,
            muxfix.running_mux(Path(tmp)) as env,
        ):
            for i in range(runs):
                for k, v in one(env, stack, image, i).items():
                    samples[k].append(v)
    finally:
        if stack:
            stack.close()
        subprocess.run(["ip", "netns", "del", DNS_NS], stderr=subprocess.DEVNULL, check=False)
    what = {
        "console": "netmux up --vm → guest has its global address (its console)",
        "seen": "netmux up --vm → guest address seen (phonebookd, status)",
        "aaaa": "netmux up --vm → AAAA answered (knotd)",
    }
    res: dict[str, Any] = {k: summary(v) for k, v in samples.items()}
    rows = [[what[k], r["n"], ms(r["median"]), ms(r["p95"]), ms(r["max"])] for k, r in res.items()]
    print("VM workload, QEMU/TCG (ms)")
    print(table(rows, ["what", "n", "median ms", "p95 ms", "max ms"]))
    lag = [s - c for s, c in zip(samples["aaaa"], samples["console"], strict=True)]
    res["aaaa_after_console"] = summary(lag)
    print(f"AAAA answered after the guest has its address: median {ms(summary(lag)['median'])} ms")
    path = write_results("vm", {"machine": machine(), "results": res, "runs": runs})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
