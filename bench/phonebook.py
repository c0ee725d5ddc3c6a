"""phonebookd: address → DNS answer latency, and the cost of a rebuild for 1, 100, 1000 records.

Runs the same stack as the tests (tests/phonebookfix.py: knotd on ::1 with RFC 2136 +
TSIG, tinydns on 127.0.0.1, a private dbus-daemon, phonebookd) in namespaces of its own
(bench-pbdns, bench-pbw), and measures in one run:

1. latency  an address is added (nodad: usable at once) to a published interface, then a
            UDP socket inside the dns namespace asks knotd (and tinydns) every 2 ms until
            the AAAA is there; likewise until it is gone after the address is removed.
            Every change comes 1.05 s after the previous one: tinydns rebuilds at most
            once a second, and Knot holds an update of a zone changed less than a second
            before until a second after that change (docs/benchmarks.md).
            Peer: the same change sent straight to knotd as one RFC 2136 update by the
            client itself (dnspython, no phonebookd): the floor of any dynamic-DNS design.
2. rebuild  for 1, 100, 1000 publications' worth of records: render the tinydns `data`
            file, write it and run tinydns-data (what one TinydnsSink rebuild costs), vs
            tinydns-data alone on the same file (the peer); and one RFC 2136 update that
            adds N records to knotd.

Run as root: `.venv/bin/python -m bench.phonebook [--quick]`. Prints tables and writes
bench/results/phonebook.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from bench.common import Asker, machine, ms, now, summary, table, write_results
from netmux import nsutil
from netmux.config import parse_host
from netmux.phonebook import client, records
from netmux.phonebook.sinks import Rfc2136Sink, TinydnsSink, UpdateServer, parse_tsig_key

DNS_NS, WL_NS = "bench-pbdns", "bench-pbw"


def _ns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL, check=False)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


def latency(stack: Any, runs: int) -> dict[str, Any]:
    from tests.phonebookfix import PUBLIC, addr

    knot = Asker(DNS_NS, "::1", 5.0)
    tiny = Asker(DNS_NS, "127.0.0.1", 5.0) if stack.want_tinydns else None
    pub = client.publish("lat", "eth0", WL_NS, address=stack.bus)
    assert pub is not None
    add_k, add_t, del_k = [], [], []
    name = f"lat.{PUBLIC}"
    try:
        for i in range(runs):
            a = f"2001:db8:1::{i + 0x100:x}"
            t0 = now()
            addr(WL_NS, "add", f"{a}/64", "nodad")
            knot.wait(name, lambda s, a=a: a in s)  # type: ignore[misc]
            add_k.append(now() - t0)
            if tiny:
                tiny.wait(name, lambda s, a=a: a in s)  # type: ignore[misc]
                add_t.append(now() - t0)
            time.sleep(1.05)  # the removal meets a zone idle for a second (see above)
            t0 = now()
            addr(WL_NS, "del", f"{a}/64")
            knot.wait(name, lambda s, a=a: a not in s)  # type: ignore[misc]
            del_k.append(now() - t0)
            if tiny:
                tiny.wait(name, lambda s, a=a: a not in s)  # type: ignore[misc]
            # tinydns rebuilds at most once a second: space the runs so that each add
            # is measured from an idle sink (the worst case is that second plus a build).
            time.sleep(1.05)
    finally:
        client.close(pub)
    # Peer: the client sends the update to knotd itself.
    key = parse_tsig_key((stack.knot_dir / "phonebook.key").read_text(), "key")
    zones = records.Zones.from_config(parse_host(stack.config.read_text()))
    peer = []

    async def direct(a: str) -> None:
        sink = Rfc2136Sink(zones, UpdateServer("::1", 53, key))
        sink.sent = {}
        sink.update([records.Record(f"peer.{PUBLIC}", "AAAA", a, 5)])
        await asyncio.sleep(0)
        await sink.flush()

    for i in range(runs):
        a = f"2001:db8:1::{i + 0x900:x}"
        t0 = now()
        nsutil.run_in_netns(DNS_NS, lambda a=a: asyncio.run(direct(a)))  # type: ignore[misc]
        knot.wait(f"peer.{PUBLIC}", lambda s, a=a: a in s)  # type: ignore[misc]
        peer.append(now() - t0)
        time.sleep(1.05)  # as above: each update meets a zone idle for a second
    out = {
        "add_knot": summary(add_k),
        "del_knot": summary(del_k),
        "peer_direct_update_knot": summary(peer),
    }
    if add_t:
        out["add_tinydns"] = summary(add_t)
    return out


def rebuild(stack: Any, sizes: list[int], reps: int) -> dict[str, Any]:
    zones = records.Zones.from_config(parse_host(stack.config.read_text()))
    out: dict[str, Any] = {}
    tinydns_data = shutil.which("tinydns-data")
    key = parse_tsig_key((stack.knot_dir / "phonebook.key").read_text(), "key")
    for n in sizes:
        recs = records.zone_records(zones)
        for i in range(n):
            ip = IPv6Address(0x20010DB8000100000000000000000000 + 0x10000 + i)
            ula = records.parse_address(f"fd64:cafe::{i + 1:x}", 64)
            recs += records.publication_records(f"w{i}", [], [records.Address(ip, 64), ula], zones)
        row: dict[str, Any] = {"records": len(recs)}
        render = []
        for _ in range(reps):
            t0 = now()
            records.render_tinydns(recs)
            render.append(now() - t0)
        row["render"] = summary(render)
        if tinydns_data:
            d = Path(tempfile.mkdtemp(prefix="pbbench-"))
            try:
                ours, peer = [], []
                for r in range(reps):
                    sink = TinydnsSink(d, Path(tinydns_data), "", 0.0)
                    sink.records = [*recs, records.Record(f"x{r}.internal", "A", "10.0.0.1", 5)]
                    t0 = now()
                    asyncio.run(sink.work())
                    ours.append(now() - t0)
                    t0 = now()
                    subprocess.run([tinydns_data], cwd=d, check=True)
                    peer.append(now() - t0)
                row["tinydns_rebuild"] = summary(ours)
                row["peer_tinydns_data_alone"] = summary(peer)
            finally:
                shutil.rmtree(d, ignore_errors=True)
        upd = []
        for _ in range(max(1, reps // 2)):

            async def once(recs: list[records.Record] = recs) -> float:
                """Seconds for the update that adds recs plus the one that takes them away
                again, each meeting zones idle for a second (Knot: see the module doc)."""
                sink = Rfc2136Sink(zones, UpdateServer("::1", 53, key, timeout=30))
                sink.sent = {}
                took = 0.0
                for want in (recs, records.zone_records(zones)):
                    await asyncio.sleep(1.05)
                    t0 = now()
                    sink.update(want)
                    await asyncio.sleep(0)
                    await sink.flush()
                    took += now() - t0
                return took

            took = nsutil.run_in_netns(DNS_NS, lambda once=once: asyncio.run(once()))  # type: ignore[misc]
            upd.append(took / 2)
        row["rfc2136_update"] = summary(upd)
        out[str(n)] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.phonebookfix import Stack, add_workload_link

    runs, reps = (5, 2) if args.quick else (20, 5)
    _ns(DNS_NS)
    _ns(WL_NS)
    stack = None
    try:
        add_workload_link(WL_NS)
        stack = Stack(DNS_NS)
        lat = latency(stack, runs)
        reb = rebuild(stack, [1, 100, 1000], reps)
    finally:
        if stack:
            stack.close()
        for n in (WL_NS, DNS_NS):
            subprocess.run(["ip", "netns", "del", n], stderr=subprocess.DEVNULL, check=False)
    rows = [[k, v["n"], ms(v["median"]), ms(v["p95"]), ms(v["max"])] for k, v in lat.items()]
    print("address -> DNS answer (ms)")
    print(table(rows, ["what", "n", "median", "p95", "max"]))
    peer = lat["peer_direct_update_knot"]["median"]
    print(f"ratio add_knot / direct update: {lat['add_knot']['median'] / peer:.2f}")
    rows = []
    for n, row in reb.items():
        for k in ("render", "tinydns_rebuild", "peer_tinydns_data_alone", "rfc2136_update"):
            if k in row:
                rows.append([f"{n} pubs ({row['records']} rr) {k}", ms(row[k]["median"]),
                             ms(row[k]["max"])])  # fmt: skip
    print("\nrebuild cost (ms)")
    print(table(rows, ["what", "median", "max"]))
    path = write_results(
        "phonebook", {"machine": machine(), "latency": lat, "rebuild": reb, "quick": args.quick}
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
