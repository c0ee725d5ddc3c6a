"""`systemctl start netmux@NAME` → AAAA answered by Knot, under a real systemd.

Boots a container with systemd as PID 1 (tests/sysbox.py: the project's units, launchers
running the checkout on the system's python3 as the .deb does), with netmux-mux,
netmux-radvd (a static prefix), phonebookd with the RFC 2136 sink and Knot as the
workload `dns` on fd64:cafe::d — the dns recipe. Then, N times: `systemctl start
netmux@bN`, and `dig` from mux every few ms until Knot answers bN's AAAA; interleaved
with it, the same for netmux@uN, whose drop-in turns the sandbox's mount-namespace
options off (what the sandbox costs). Then all of it again with the launcher told not to
build a workload while systemd sets its unit up (`netmux launcher --no-prebuild`,
netmux/unitwatch.py): what building ahead saves, as `*_no_prebuild`.

Where the time goes, from the journal of each start (monotonic timestamps): systemd's
"Starting" → phonebookd's "published" (the `netmux up` client's start, the warm
launcher's worker: config, building the namespace, waiting for the address, the publish
socket) → phonebookd's "addresses now" (DAD
of the optimistic addresses over) → netmux's "up in" (Knot acknowledged the update) →
systemd's "Started" (READY=1). Peers measured
in the same box: `python3 -c pass` and `python3 -c 'import netmux.workload'`; `systemctl
start` of a unit that only execs `sleep` (systemctl, the job, fork and exec: the part of
start → AAAA that is systemd's), and the same unit with netmux@'s sandbox (what systemd's
set-up of the sandbox adds); one `dig` of a name Knot has (the part that is the
measuring).

Each start comes `--gap` seconds (default 1.2) after the previous one's `systemctl stop`
returned: Knot holds an update of a zone that changed less than a second before, in an
earlier second of the wall clock, until a second after that change (its zone events are
planned in whole seconds; docs/benchmarks.md, "Start to AAAA under systemd"), so with
`--gap 0.3` most starts measure the stop's deletion, not the start.

Then (`--many N`, default 100): N netmux@ units started in one transaction, as boot
starts the enabled ones, until all N answer in Knot; and stopping them all; then the same
with the sandbox's mount options off for every instance (a template drop-in), and the
same as shipped with the launcher not building ahead.

Run as root: `.venv/bin/python -m bench.systemd_dns [--quick] [--many N] [--gap S]`; writes
bench/results/systemd_dns.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import compile_checkout, machine, ms, now, summary, table, write_results

DOMAIN = "example.org"
PUBLIC = f"box.{DOMAIN}"
KNOT = "/var/lib/netmux/knot"
CONFIG = f"""[mux]
static_addresses = ["2001:db8:0:1::1/64"]
root_link = "macv0"           # phonebookd (root namespace) reaches Knot at fd64:cafe::d
[dns]
hostname = "box"
domain = "{DOMAIN}"
[phonebook]
sinks = ["rfc2136"]
server = "fd64:cafe::d"
tsig_key = "/etc/netmux/phonebook.key"
ns_label = "dns"
"""


def prepare_dns(box: Any) -> Path:
    """The dns recipe in a booted box: Knot's config, zones and key, and the workload `dns`
    that runs it on fd64:cafe::d. Returns the box's workloads directory (host path)."""
    from netmux.config import parse_host
    from netmux.phonebook import knot
    from netmux.phonebook.records import Zones

    zones = Zones.from_config(parse_host(CONFIG))
    key = box.path("/etc/netmux/phonebook.key")
    knot.write_all(knot.KnotSite(zones, box.path(KNOT), ["::"], 53, key))
    conf = box.path(f"{KNOT}/knot.conf")
    conf.write_text(conf.read_text().replace(str(box.path(KNOT)), KNOT).replace(
        str(box.path("/etc/netmux/phonebook.key")), "/etc/netmux/phonebook.key"))  # fmt: skip
    wl: Path = box.etc / "netmux" / "workloads"
    wl.mkdir(parents=True, exist_ok=True)
    (wl / "dns.toml").write_text(
        f'command = ["/usr/sbin/knotd", "-c", "{KNOT}/knot.conf"]\n'
        'addresses = ["fd64:cafe::d/64"]\nports = ["udp/53", "tcp/53"]\n'
    )
    return wl


def _journal_times(box: Any, unit: str, name: str) -> dict[str, float]:
    """Monotonic µs of the start's milestones, from the journal."""
    out: dict[str, float] = {}
    for rec in box.journal("-b", "--output-fields=MESSAGE,_SYSTEMD_UNIT,UNIT"):
        msg = str(rec.get("MESSAGE", ""))
        t = int(rec["__MONOTONIC_TIMESTAMP"]) / 1e6
        if rec.get("UNIT") == unit and msg.startswith("Starting ") and "starting" not in out:
            out["starting"] = t
        elif rec.get("UNIT") == unit and msg.startswith("Started ") and "started" not in out:
            out["started"] = t
        elif msg.startswith(f"published {name} ("):
            out["published"] = t
        elif msg.startswith(f"workload {name} up in "):
            out["up"] = t
    return out


def _starts(
    box: Any, res: dict[str, list[float]], runs: int, gap: float, dig: Any, key: str
) -> None:
    """`runs` + 1 starts of netmux@bN, each interleaved with one of netmux@uN (the
    mount options off): start → AAAA and the journal's split, into res[...`key`]. Names
    are new for each `key` (the journal's split takes each unit's first start)."""
    b, u = ("b", "u") if not key else ("c", "v")
    for i in range(runs + 1):  # the first start warms the page cache: not counted
        for name in (f"{u}{i}", f"{b}{i}"):
            unit = f"netmux@{name}.service"
            t0 = now()
            box.systemctl("start", unit, timeout=60)
            t1 = now()
            while not dig(f"{name}.{PUBLIC}"):
                if now() - t0 > 10:
                    raise RuntimeError(f"{name}: no AAAA within 10 s")
            t2 = now()
            j = _journal_times(box, unit, name)
            box.systemctl("stop", unit, timeout=60)
            time.sleep(gap)  # the next start meets a zone idle for `gap` (see above)
            if i > 0 and name[0] == u:
                res["start_to_aaaa_unsandboxed" + key].append(t2 - t0)
        if i == 0:
            continue
        res["systemctl_start" + key].append(t1 - t0)
        res["start_to_aaaa" + key].append(t2 - t0)
        if {"starting", "published", "up", "started"} <= set(j):
            res["starting_to_published" + key].append(j["published"] - j["starting"])
            res["published_to_up" + key].append(j["up"] - j["published"])
            res["up_to_started" + key].append(j["started"] - j["up"])


def _many(box: Any, n: int, timeout: float = 120.0) -> dict[str, float]:
    """Start n netmux@mN units in one `systemctl start --no-block` (one transaction, as
    boot starts the enabled ones) with mux, radvd, phonebookd and Knot already up; seconds
    until 50 %, 90 % and all of them answer in Knot (one batch of `dig`s per round)."""
    names = [f"m{i}" for i in range(n)]
    box.write("/run/bench-many.q", "".join(f"{m}.{PUBLIC} AAAA\n" for m in names))
    t0 = now()
    box.systemctl("start", "--no-block", *(f"netmux@{m}.service" for m in names))
    seen: dict[str, float] = {}
    while len(seen) < n:
        if now() - t0 > timeout:
            raise RuntimeError(f"only {len(seen)} of {n} answer in DNS after {timeout:g} s")
        out = box.run("ip", "netns", "exec", "mux", "dig", "+noall", "+answer", "+tries=1",
                      "+time=1", "@fd64:cafe::d", "-f", "/run/bench-many.q",
                      check=False).stdout  # fmt: skip
        t = now() - t0
        for line in out.splitlines():
            label = line.split(".", 1)[0]
            if line.strip() and label in names and label not in seen:
                seen[label] = t
        time.sleep(0.1)
    times = sorted(seen.values())
    out_ = {"n": float(n), "all_answer": times[-1], "half_answer": times[n // 2 - 1],
            "p90_answer": times[max(0, int(0.9 * n) - 1)]}  # fmt: skip
    t1 = now()
    box.systemctl("stop", *(f"netmux@{m}.service" for m in names), timeout=300)
    out_["stop_all"] = now() - t1
    return out_


# netmux@.service's mount-namespace options off (the example drop-in): most of what its
# sandbox costs at start (measured option by option on a unit that execs `sleep`; seccomp
# and the capability set cost a few ms at most).
UNSANDBOXED = (
    Path(__file__).resolve().parent.parent
    / "units" / "examples" / "netmux@.service.d" / "no-mount-sandbox.conf"
).read_text()  # fmt: skip

LAUNCHER_DROPIN = "/etc/systemd/system/netmux-launcher.service.d/bench.conf"
NO_PREBUILD = "[Service]\nExecStart=\nExecStart=/opt/netmux/bin/netmux launcher --no-prebuild\n"
PEERS = (
    ("peer_systemctl_start", "bench-peer.service"),
    ("peer_systemctl_start_sandboxed", "bench-peer-sandboxed.service"),
)


def sandbox() -> str:
    """netmux@.service's sandbox: its [Service] lines from the first one that is not about
    the start itself (CapabilityBoundingSet=) to the end of the section."""
    text = (Path(__file__).resolve().parent.parent / "units" / "netmux@.service").read_text()
    service = text.split("[Service]\n", 1)[1].split("\n[", 1)[0]
    return service[service.index("CapabilityBoundingSet=") :].strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--many", type=int, default=100, help="units started at once (0: none)")
    ap.add_argument(
        "--gap",
        type=float,
        default=1.2,
        help="seconds from one start's `systemctl stop` to the next start (Knot: see above)",
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests import sysbox

    compile_checkout()  # the box runs the checkout as the .deb runs its byte-compiled files
    runs = 5 if args.quick else 15
    if args.quick:
        args.many = min(args.many, 20)
    steps = ("start_to_aaaa", "start_to_aaaa_unsandboxed", "systemctl_start",
             "starting_to_published", "published_to_up", "up_to_started")  # fmt: skip
    res: dict[str, list[float]] = {k: [] for k in (
        *steps, *(f"{k}_no_prebuild" for k in steps), "python_pass", "python_import_workload",
        "peer_systemctl_start", "peer_systemctl_start_sandboxed", "peer_dig")}  # fmt: skip
    with sysbox.boot(CONFIG, units=True) as box:
        prepare_dns(box)
        box.systemctl("start", "netmux-mux.service", "netmux-radvd.service", "phonebookd.service")
        box.systemctl("start", "netmux@dns.service", timeout=60)

        def dig(name: str) -> str:
            return box.run("ip", "netns", "exec", "mux", "dig", "+short", "+tries=1", "+time=1",
                           "@fd64:cafe::d", name, "AAAA", check=False).stdout.strip()  # fmt: skip

        deadline = time.monotonic() + 20
        while not dig(f"dns.{PUBLIC}"):
            if time.monotonic() > deadline:
                log = box.run("journalctl", "--no-pager", "-n", "40", check=False).stdout
                raise RuntimeError(f"Knot in netmux@dns does not answer:\n{log}")
            time.sleep(0.05)
        # The same start without the sandbox (a drop-in per instance uN, interleaved with
        # bN): what the workload's sandbox costs on the way to its AAAA.
        for i in range(runs + 1):
            for u in ("u", "v"):
                box.write(f"/etc/systemd/system/netmux@{u}{i}.service.d/bench.conf", UNSANDBOXED)
        box.systemctl("daemon-reload")
        _starts(box, res, runs, args.gap, dig, "")
        # The same with the launcher told not to build ahead (netmux/unitwatch.py): what
        # building while systemd sets the unit up saves.
        box.write(LAUNCHER_DROPIN, NO_PREBUILD)
        box.systemctl("daemon-reload")
        box.systemctl("restart", "netmux-launcher.service")
        _starts(box, res, runs, args.gap, dig, "_no_prebuild")
        box.run("rm", LAUNCHER_DROPIN)
        box.systemctl("daemon-reload")
        box.systemctl("restart", "netmux-launcher.service")
        # Peers in the same box: what `systemctl start` of a unit that does nothing costs
        # (client, job, fork, exec), and one dig of a name Knot already has.
        # The second peer has netmux@'s sandbox too: what systemd's set-up of it costs.
        peer = "[Service]\nType=exec\nExecStart=/bin/sleep infinity\n"
        box.write("/etc/systemd/system/bench-peer.service", peer)
        box.write("/etc/systemd/system/bench-peer-sandboxed.service", peer + sandbox())
        box.systemctl("daemon-reload")
        for _ in range(runs):
            for key, unit in PEERS:
                t0 = now()
                box.systemctl("start", unit)
                res[key].append(now() - t0)
                box.systemctl("stop", unit)
            t0 = now()
            if not dig(f"dns.{PUBLIC}"):
                raise RuntimeError("the peer dig got no answer")
            res["peer_dig"].append(now() - t0)
        if args.many:
            bulk = _many(box, args.many)
            # The same with the sandbox's mount options off for every instance: what the
            # mount namespaces cost when many units start at once.
            dropin = "/etc/systemd/system/netmux@.service.d/zz-bench-unsandboxed.conf"
            box.write(dropin, UNSANDBOXED)
            box.systemctl("daemon-reload")
            bulk_unsandboxed = _many(box, args.many)
            box.run("rm", dropin)
            box.write(LAUNCHER_DROPIN, NO_PREBUILD)
            box.systemctl("daemon-reload")
            box.systemctl("restart", "netmux-launcher.service")
            bulk_no_prebuild = _many(box, args.many)
            box.run("rm", LAUNCHER_DROPIN)
            box.systemctl("daemon-reload")
            box.systemctl("restart", "netmux-launcher.service")
        site = ["-c", f"import sys; sys.path[0:0] = ['{sysbox._OPT_SRC}', '{sysbox._OPT_SITE}']"]
        for _ in range(runs):
            t0 = now()
            box.run("python3", "-c", "pass")
            res["python_pass"].append(now() - t0)
            t0 = now()
            box.run("python3", site[0], site[1] + "; import netmux.workload, netmux.cli")
            res["python_import_workload"].append(now() - t0)
    stats = {k: summary(v) for k, v in res.items() if v}
    rows = [[k, v["n"], ms(v["median"]), ms(v["p95"]), ms(v["max"])] for k, v in stats.items()]
    print("systemctl start netmux@NAME -> AAAA from Knot, under systemd (ms)")
    print(table(rows, ["what", "n", "median", "p95", "max"]))
    if args.many:
        print(f"\n{args.many} netmux@ units started in one transaction (as at boot), mux ready:")
        rows_ = [[k, f"{v:.2f}", f"{bulk_unsandboxed[k]:.2f}", f"{bulk_no_prebuild[k]:.2f}"]
                 for k, v in bulk.items() if k != "n"]  # fmt: skip
        print(table(rows_, ["what", "s", "s, mount options off", "s, no build ahead"]))
    many = {"many": bulk, "many_unsandboxed": bulk_unsandboxed,
            "many_no_prebuild": bulk_no_prebuild} if args.many else {}  # fmt: skip
    path = write_results("systemd_dns", {"machine": machine(), "stats": stats,
                                         "quick": args.quick, **many})  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
