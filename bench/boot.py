"""Boot with many workloads: from netmux-mux ready to every enabled workload answering in DNS.

Boots a container with systemd as PID 1 (tests/sysbox.py: the project's units, launchers
running the checkout on the system's python3 as the .deb does), with netmux-mux,
netmux-radvd (a static prefix), phonebookd with the RFC 2136 sink and Knot as the
workload `dns` on fd64:cafe::d (the dns recipe), and N enabled `netmux@bI` units, each
with a small command (`sleep infinity`, from /etc/netmux/workloads/bI.toml).

With the recipe's drop-in that orders every workload after netmux@dns
(recipes/dns/netmux@.service.d/after-dns.conf), as recipes/dns installs it. Each round
takes the whole stack down (`systemctl stop netmux.target`: mux, radvd and every workload
go with it) and starts `multi-user.target` again, which is the transaction a boot runs:
mux, radvd, netmux@dns and the N workloads, in the order their units give. A poller in mux
asks Knot for every pending workload's AAAA (its own DNS packets, 100 ms apart per name, so
that polling 100 names stays ≲ 1000 queries/s) and notes
when each first answers. Measured from systemd's "Started netmux-mux" (journal, monotonic
clock) to the last name answering. Peer in the same run: N units of a plain
`sleep infinity` service started in one transaction, to all active.

Run as root: `.venv/bin/python -m bench.boot [--quick] [--workloads N]`; writes
bench/results/boot.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import machine, ms, summary, table, write_results
from bench.systemd_dns import CONFIG, PUBLIC, prepare_dns

REPO = Path(__file__).resolve().parent.parent
PLAIN_UNIT = """[Unit]
Description=bench peer %i

[Service]
Type=exec
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""
# Runs inside the box, in mux: one UDP query per pending name every 100 ms until every name
# has an AAAA answer (NOERROR, ANCOUNT > 0). Prints {name: CLOCK_MONOTONIC seconds}.
POLLER = r"""
import json, os, select, socket, struct, sys, time
names, server, limit = sys.argv[1].split(","), sys.argv[2], float(sys.argv[3])
def query(qid, name):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + q + struct.pack("!HH", 28, 1)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # not connected: mux may have no
pending = dict(enumerate(names))
seen = {}
deadline = time.monotonic() + limit
while pending and time.monotonic() < deadline:
    for qid, name in pending.items():
        try:
            s.sendto(query(qid, name), (server, 53))  # route yet, or Knot may not listen
        except OSError:
            pass
    end = time.monotonic() + 0.1
    while (left := end - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]:
            break
        try:
            data, _ = s.recvfrom(4096)
        except OSError:
            break
        qid, flags, _, ancount = struct.unpack("!HHHH", data[:8])
        if qid in pending and flags & 0xF == 0 and ancount > 0:
            seen[pending.pop(qid)] = time.monotonic()
print(json.dumps({"seen": seen, "missing": sorted(pending.values())}))
"""


def _last_started(box: Any, unit: str, after: float) -> float | None:
    """Monotonic seconds of the last "Started" of `unit` after `after`, from the journal."""
    t = None
    for rec in box.journal("-b", "-u", unit, "--output-fields=MESSAGE,UNIT"):
        mono = int(rec["__MONOTONIC_TIMESTAMP"]) / 1e6
        if (
            rec.get("UNIT") == unit
            and str(rec.get("MESSAGE", "")).startswith("Started ")
            and (mono > after)
        ):
            t = mono
    return t


def _wait_inactive(box: Any, units: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = box.run("systemctl", "is-active", *units, check=False).stdout.split()
        if all(s in ("inactive", "failed") for s in out):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"still active after stop: {out}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workloads", type=int, default=0, help="N (default 100, --quick 20)")
    ap.add_argument("--rounds", type=int, default=0, help="boots (default 3, --quick 1)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests import sysbox

    n = args.workloads or (20 if args.quick else 100)
    rounds = args.rounds or (1 if args.quick else 3)
    res: dict[str, list[float]] = {
        "mux_ready_to_all_answering": [],
        "mux_ready_to_first_answering": [],
        "start_to_mux_ready": [],
        "mux_ready_to_radvd_started": [],
        "mux_ready_to_dns_started": [],
        "peer_plain_start_to_all_active": [],
    }
    per_name: list[float] = []
    with sysbox.boot(CONFIG, units=True) as box:
        wl = prepare_dns(box)
        names = [f"b{i}" for i in range(n)]
        for name in names:
            (wl / f"{name}.toml").write_text('command = ["/bin/sleep", "infinity"]\n')
        box.write("/etc/systemd/system/benchplain@.service", PLAIN_UNIT)
        order = REPO / "recipes" / "dns" / "netmux@.service.d" / "after-dns.conf"
        box.write("/etc/systemd/system/netmux@.service.d/after-dns.conf", order.read_text())
        box.daemon_reload()
        units = [f"netmux@{name}.service" for name in names]
        box.systemctl("enable", "netmux.target", "netmux-mux.service", "netmux-radvd.service",
                      "phonebookd.service", "netmux@dns.service", *units)  # fmt: skip
        box.systemctl("start", "phonebookd.service")
        box.write("/run/bench-poller.py", POLLER)
        fqdns = ",".join(f"{name}.{PUBLIC}" for name in names)
        for r in range(rounds):
            box.systemctl("stop", "netmux.target", timeout=300)  # and all PartOf= it
            _wait_inactive(box, ["netmux-mux.service", "netmux-radvd.service",
                                 "netmux@dns.service", *units])  # fmt: skip
            box.run("systemctl", "reset-failed", check=False)
            t_start = time.monotonic()
            box.systemctl("start", "--no-block", "multi-user.target")
            deadline = time.monotonic() + 60
            while not box.path("/run/netns/mux").exists():  # the poller runs inside mux
                if time.monotonic() > deadline:
                    raise RuntimeError("netmux-mux did not come up")
                time.sleep(0.01)
            out = box.run("ip", "netns", "exec", "mux", "python3", "/run/bench-poller.py",
                          fqdns, "fd64:cafe::d", "120", timeout=180).stdout  # fmt: skip
            polled = json.loads(out)
            if polled["missing"]:
                first = polled["missing"][0].split(".")[0]
                log = box.run("journalctl", "--no-pager", "-b", "-o", "short-monotonic",
                              "-u", f"netmux@{first}", "-u", "netmux@dns", "-u", "netmux-radvd",
                              "-u", "netmux-mux", check=False).stdout[-6000:]  # fmt: skip
                raise RuntimeError(f"round {r}: never answered: {polled['missing'][:10]}\n{log}")
            mux_ready = _last_started(box, "netmux-mux.service", t_start)
            if mux_ready is None:
                raise RuntimeError("no 'Started netmux-mux' in the journal")
            seen = sorted(polled["seen"].values())
            for key, unit in (("radvd", "netmux-radvd.service"), ("dns", "netmux@dns.service")):
                started = _last_started(box, unit, t_start)
                if started is not None:
                    res[f"mux_ready_to_{key}_started"].append(started - mux_ready)
            res["start_to_mux_ready"].append(mux_ready - t_start)
            res["mux_ready_to_all_answering"].append(seen[-1] - mux_ready)
            res["mux_ready_to_first_answering"].append(seen[0] - mux_ready)
            per_name += [t - mux_ready for t in seen]
            failed = box.run("systemctl", "--failed", "--no-legend", check=False).stdout.strip()
            if failed:
                raise RuntimeError(f"round {r}: failed units:\n{failed}")
        box.systemctl("stop", "netmux-mux.service", timeout=300)
        plain = [f"benchplain@{i}.service" for i in range(n)]
        for _ in range(rounds):
            t0 = time.monotonic()
            box.systemctl("start", *plain, timeout=120)
            deadline = time.monotonic() + 60
            while box.run("systemctl", "is-active", "--quiet", *plain, check=False).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError("plain units did not all start")
                time.sleep(0.01)
            res["peer_plain_start_to_all_active"].append(time.monotonic() - t0)
            box.systemctl("stop", *plain, timeout=120)
    stats = {k: summary(v) for k, v in res.items() if v}
    stats["per_workload_mux_ready_to_answering"] = summary(per_name)
    rows = [[k, v["n"], ms(v["median"]), ms(v["p95"]), ms(v["max"])] for k, v in stats.items()]
    print(f"boot with {n} enabled netmux@ units (ms)")
    print(table(rows, ["what", "n", "median", "p95", "max"]))
    path = write_results("boot", {"machine": machine(), "workloads": n, "rounds": rounds,
                                  "stats": stats, "quick": args.quick})  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
