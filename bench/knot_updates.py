"""Knot alone: how long one RFC 2136 update takes to be answered, by the gap to the last one.

knotd with netmux's own knot.conf (netmux/phonebook/knot.py) on ::1 in a namespace of its
own (bench-knu), its directory under /run/netmux-bench-knot. Each case sends single-record
updates of one zone, `gap` seconds apart, as Rfc2136Sink sends them (dnspython, TCP; or
UDP), and asks over UDP every 2 ms until knotd answers the new AAAA. Knot plans its zone
events in whole seconds: an update that comes less than a second after the last change of
its zone, once the clock's second has turned, waits until a second after that change, so
about a fraction `gap` of the updates take ~(1 - gap) s (docs/benchmarks.md, "Start to
AAAA under systemd"). The last case commits through Knot's control socket (`knotc
zone-begin`/`zone-set`/`zone-commit`), which plans no such wait.

Run as root: `.venv/bin/python -m bench.knot_updates [--quick]`; writes
bench/results/knot_updates.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import machine, ms, now, summary, table, write_results
from netmux import nsutil
from netmux.config import parse_host
from netmux.phonebook import knot, records
from netmux.phonebook.sinks import Rfc2136Sink, TsigKey

NS = "bench-knu"
DIR = Path("/run/netmux-bench-knot")
CONFIG = '[dns]\nhostname = "box"\ndomain = "example.org"\n'
ZONE = "box.example.org"


def _answered(sock: socket.socket, name: str, address: str) -> bool:
    import dns.message
    import dns.query

    try:
        r = dns.query.udp(dns.message.make_query(name, "AAAA"), "::1", timeout=0.5, sock=sock)
    except Exception:
        return False
    return any(rd.to_text() == address for rrset in r.answer for rd in rrset)


def _answered_soa() -> bool:
    import dns.message
    import dns.query

    def ask() -> bool:
        try:
            q = dns.message.make_query(ZONE + ".", "SOA")
            return bool(dns.query.udp(q, "::1", timeout=0.3).answer)
        except Exception:
            return False

    return bool(nsutil.run_in_netns(NS, ask))


def _send(how: str, zones: records.Zones, key: TsigKey, name: str, address: str) -> None:
    """One update of ZONE: `tcp` exactly as Rfc2136Sink sends it, `udp` the same message
    over UDP, `ctl` a transaction on knotd's control socket."""
    if how == "ctl":
        sock = str(DIR / "run" / "knot.sock")
        for args in (
            ["zone-begin", ZONE],
            ["zone-set", ZONE, name, "5", "AAAA", address],
            ["zone-commit", ZONE],
        ):
            subprocess.run(["knotc", "-s", sock, *args], check=True, stdout=subprocess.DEVNULL)
        return

    async def update() -> None:
        sink = Rfc2136Sink(zones, "::1", 53, key)
        if how == "tcp":
            sink.sent = {}
            sink.update([records.Record(name.rstrip("."), "AAAA", address, 5)])
            await asyncio.sleep(0)
            await sink.flush()
            if sink.last_error:
                raise RuntimeError(sink.last_error)
            return
        import dns.asyncquery
        import dns.update

        keyring, keyname = sink._keyring()
        msg = dns.update.UpdateMessage(
            ZONE + ".", keyring=keyring, keyname=keyname, keyalgorithm=key.algorithm
        )
        msg.replace(name, 5, "AAAA", address)
        resp = await dns.asyncquery.udp(msg, "::1", timeout=3.0, port=53)
        if resp.rcode() != 0:
            raise RuntimeError(f"update refused: rcode {resp.rcode()}")

    nsutil.run_in_netns(NS, lambda: asyncio.run(update()))


def case(
    tag: str, how: str, gap: float, n: int, zones: records.Zones, key: TsigKey
) -> dict[str, Any]:
    """n new names (`tag` keeps them apart from other cases': an update that changes
    nothing changes no serial, and plans no wait)."""
    sock = nsutil.run_in_netns(NS, lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    took = []
    try:
        time.sleep(1.1)  # the zone idle: the first update of the case meets no earlier one
        for i in range(n):
            name, address = f"{tag}-{i}.{ZONE}.", f"2001:db8::{i + 1:x}"
            t0 = now()
            _send(how, zones, key, name, address)
            while not _answered(sock, name, address):
                if now() - t0 > 5:
                    raise RuntimeError(f"{name} not answered after 5 s")
                time.sleep(0.002)
            took.append(now() - t0)
            time.sleep(gap)
    finally:
        sock.close()
    out: dict[str, Any] = dict(summary(took))
    out["over_250ms"] = sum(t > 0.25 for t in took)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = 10 if args.quick else 40
    cases = [("tcp", 0.1), ("udp", 0.1), ("tcp", 0.3), ("tcp", 1.1), ("ctl", 0.1)]
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL, check=False)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    proc = None
    res: dict[str, Any] = {}
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        shutil.rmtree(DIR, ignore_errors=True)
        zones = records.Zones.from_config(parse_host(CONFIG))
        key = knot.write_all(zones, DIR, ["::1"], 53)
        log = (DIR / "knot.log").open("wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", NS, "knotd", "-c", str(DIR / "knot.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not _answered_soa():  # knotd has loaded the zone
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("knotd did not start: " + (DIR / "knot.log").read_text())
            time.sleep(0.05)
        for c, (how, gap) in enumerate(cases):
            res[f"{how} gap {gap:g} s"] = case(f"c{c}", how, gap, n, zones, key)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(DIR, ignore_errors=True)
    rows = [
        [k, v["n"], ms(v["median"]), ms(v["p95"]), ms(v["max"]), v["over_250ms"]]
        for k, v in res.items()
    ]
    print("one update -> answered by knotd, by the gap to the previous one (ms)")
    print(table(rows, ["update", "n", "median", "p95", "max", "> 250 ms"]))
    path = write_results("knot_updates", {"machine": machine(), "cases": res, "quick": args.quick})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
