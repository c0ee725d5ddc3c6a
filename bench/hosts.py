"""Several hosts: a record on host b → answered by the off-site secondary; a lease lapse → gone.

The topology of the tests (tests/hostsfix.py) in namespaces of its own (bench-h*): a Knot
primary (host a), a Knot secondary ("vps") that learns the zones from the catalog zone,
host b joined by `netmux host add` / `netmux host join`. Measured in one run:

1. publish  host b's sink (netmux.hosts.HostSink, as phonebookd runs it) is handed a record
            with a new name; a UDP socket asks the primary and, separately, the secondary
            every 2 ms until the AAAA is there (RFC 2136 + TSIG to the primary, then NOTIFY +
            IXFR to the secondary). Peer: the same change sent by host b straight to the
            primary as one dnspython update (no sink, no lease refresh), until the
            secondary answers.
2. lapse    host b stops refreshing (switched off: nothing unpublished); an expiry pass
            (`netmux host expire`'s function) runs on the primary every --expire-every
            seconds, as the timer would; measured until the secondary no longer answers.
            The bound it is compared with: lease + expiry interval (+ 1 s: leases carry
            whole seconds).

Run as root: `.venv/bin/python -m bench.hosts [--quick]`. Prints tables and writes
bench/results/hosts.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench.common import Asker, machine, ms, now, summary, table, write_results
from netmux import hosts, nsutil
from netmux.config import load_host
from netmux.phonebook.records import Record, Zones
from netmux.phonebook.sinks import parse_tsig_key

PREFIX = "bench-h"
B = "b.example.org"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests import hostsfix

    tmp = Path(tempfile.mkdtemp(prefix="netmux-bench-hosts-"))
    made: list[str] = []
    started: list[subprocess.Popen[bytes]] = []
    counter = itertools.count()

    def netns(suffix: str) -> str:
        name = PREFIX + suffix
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL, check=False)
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        made.append(name)
        return name

    def uname(suffix: str) -> str:
        return f"bh{next(counter)}{suffix}"

    def start(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p: subprocess.Popen[bytes] = subprocess.Popen(argv, **kw)
        started.append(p)
        return p

    try:
        w = hostsfix.build(tmp, netns, uname, start, lease=args.lease)
        for cmd in (
            (
                w.pri,
                w.cfg_a,
                "host",
                "add",
                "b",
                "--address",
                hostsfix.PRI_B,
                "--knot-socket",
                str(w.socket),
            ),
            (w.b, w.cfg_b, "host", "join", str(tmp / "hosts" / "b.join")),
        ):
            r = hostsfix.netmux(*cmd)  # type: ignore[arg-type]
            if r.returncode != 0:
                raise SystemExit(f"bench.hosts: {r.stderr.strip()}")
        sec, pri = Asker(w.vps, "::1", 20.0), Asker(w.pri, "::1", 20.0)
        hostsfix.until(
            "b's zone on the secondary",
            lambda: (
                bool(sec.aaaa(f"nothing.{B}"))
                or "dns.a.example.org." in hostsfix.dig(w.vps, "::1", B, "NS")
            ),
        )
        return {
            "publish": publish(w, sec, pri, args.runs),
            "lapse": lapse(w, sec, args.lapses, args.lease, args.expire_every),
            "lease": args.lease,
            "expire_every": args.expire_every,
        }
    finally:
        for p in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _sink(w: Any) -> hosts.HostSink:
    cfg = load_host(w.cfg_b)
    sink = hosts.make_sink(cfg, Zones.from_config(cfg))
    assert sink is not None
    return sink


def publish(w: Any, sec: Asker, pri: Asker, runs: int) -> dict[str, Any]:
    to_pri, to_sec, peer = [], [], []
    from tests.hostsfix import PRI_B, WWW_B

    async def main() -> None:
        sink = _sink(w)
        for i in range(runs):
            name = f"r{i}.{B}"
            t0 = now()
            sink.update([Record(name, "AAAA", WWW_B, 5)])
            to_pri.append(await asyncio.to_thread(pri.wait, name, lambda s: WWW_B in s))
            await asyncio.to_thread(sec.wait, name, lambda s: WWW_B in s)
            to_sec.append(now() - t0)
        await sink.close()

    nsutil.run_in_netns(w.b, lambda: asyncio.run(main()))
    key = parse_tsig_key((w.tmp / "b" / "host.key").read_text(), "b")
    for i in range(runs):
        name = f"p{i}.{B}"
        msg = hosts.update_message(B, key)
        msg.replace(name + ".", 5, "AAAA", WWW_B)
        t0 = now()
        nsutil.run_in_netns(w.b, functools.partial(hosts.send, PRI_B, 53, msg))
        sec.wait(name, lambda s: WWW_B in s)
        peer.append(now() - t0)
    return {
        "sink_to_primary": summary(to_pri),
        "sink_to_secondary": summary(to_sec),
        "peer_direct_update_to_secondary": summary(peer),
    }


def lapse(w: Any, sec: Asker, runs: int, lease: float, every: float) -> dict[str, Any]:
    from tests.hostsfix import WWW_B

    cfg_a = load_host(w.cfg_a)
    stop = threading.Event()

    def expiry_timer() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):
                nsutil.run_in_netns(w.pri, lambda: hosts.expire(cfg_a))

    gone = []
    timer = threading.Thread(target=expiry_timer, daemon=True)
    timer.start()
    try:
        for i in range(runs):
            name = f"l{i}.{B}"

            async def switch_off(name: str = name) -> float:
                sink = _sink(w)
                sink.update([Record(name, "AAAA", WWW_B, 5)])
                await asyncio.wait_for(sink.synced(), 20)
                await sink.abandon()  # its last lease refresh was just now
                return now()

            t0 = nsutil.run_in_netns(w.b, lambda f=switch_off: asyncio.run(f()))  # type: ignore[misc]
            sec.wait(name, lambda s: WWW_B in s)
            sec.wait(name, lambda s: not s, timeout=lease + every + 30)
            gone.append(now() - t0)
    finally:
        stop.set()
        timer.join()
    return {"lapse_to_gone_on_secondary": summary(gone), "bound": lease + every + 1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hosts", description=__doc__)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--lapses", type=int, default=5)
    ap.add_argument("--lease", type=float, default=2.0)
    ap.add_argument("--expire-every", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.lapses = 5, 1
    res = run(args)
    p = res["publish"]
    rows = [
        ("host b sink → primary answers", p["sink_to_primary"]),
        ("host b sink → secondary answers", p["sink_to_secondary"]),
        ("peer: one direct update → secondary answers", p["peer_direct_update_to_secondary"]),
        ("lease lapse → gone on the secondary", res["lapse"]["lapse_to_gone_on_secondary"]),
    ]
    print(
        table(
            [(n, s["n"], ms(s["median"]), ms(s["p95"]), ms(s["max"])) for n, s in rows],
            ["several hosts", "n", "median ms", "p95 ms", "max ms"],
        )
    )
    sink_sec = p["sink_to_secondary"]["median"]
    print(
        f"ratio (medians) sink → secondary / direct update → secondary: "
        f"{sink_sec / p['peer_direct_update_to_secondary']['median']:.2f}"
    )
    print(
        f"lease {res['lease']:g} s, expiry pass every {res['expire_every']:g} s: bound "
        f"{res['lapse']['bound']:g} s"
    )
    path = write_results("hosts", {"machine": machine(), **res})
    print(f"(results in {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
