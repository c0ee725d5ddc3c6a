"""The launcher's own cost: `netmux up`/`down` through the command against the same work
in-process, interpreter start-up peers, and bulk (many at once, many running).

On bench/lifecycle.py's lab (netns bench-mux / bench-router, paths under
/run/netmux-bench; never the host's NICs), without phonebookd (the publish step is
measured under systemd by bench/systemd_dns.py):

1. start   N rounds, interleaved: in-process up → usable global + default route, down;
           the same through the command as the package runs it (a console script on
           /usr/bin/python3: `netmux up NAME`, then `down`), once with the warm launcher
           listening (netmux/launcher.py, started here on the bench's own socket) and
           once without (the command does the work itself); peers in the same rounds:
           `python3 -c pass`, `python3 -S -c pass`, and `python3 -c 'import netmux.cli,
           netmux.workload'` (the imports alone).
2. bulk    through the launcher: one `netmux up` alone, then C of them at once (all
           usable = the last one returned; each `up` returns only once its own address
           is usable), ratio to the one, and the peer: C bare `python3 -S -c pass` at
           once (the client's interpreter, which every `up` starts); then workloads up
           to M running (in-process), `netmux ls` and `netmux status` at M, and
           `netmux down` of all M in one command (`netmux down NAME...`), wall time.

Run as root: `.venv/bin/python -m bench.launch` (or `make bench`); `--quick` for a smoke
run. Prints tables and writes bench/results/launch.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import compile_checkout, machine, ms, now, summary, table, write_results
from bench.lifecycle import NEIGH, check_usable, cleanup, neigh_limits, setup
from netmux import config, journal, launch, workload
from netmux.config import HostConfig

# The package's interpreter, with the checkout and the venv's packages on its path (as
# tests/sysbox.py runs the units): the venv's own python pays ~20 ms for its editable
# install's finder, which no installed netmux has.
PY = "/usr/bin/python3"
REPO = Path(__file__).resolve().parent.parent
SITE = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), None)
_ENV: dict[str, str] = {}
_LAUNCHER: list[int] = []  # the launcher's PID while it runs


def _cpu() -> float:
    """CPU seconds of every process a bulk phase ran: this bench's reaped children (the
    clients) and the launcher's (its workers)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = r.ru_utime + r.ru_stime
    if not _LAUNCHER:
        return own
    fields = Path(f"/proc/{_LAUNCHER[0]}/stat").read_text().rsplit(")", 1)[1].split()
    return own + (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _cli(host: HostConfig) -> list[str]:
    """The command as the .deb installs it (debian/netmux.command: no site; no runpy, as
    `-m` has), the checkout and the venv's packages on its path by PYTHONPATH."""
    script = Path(host.paths.run_dir) / "netmux"
    script.write_text((REPO / "debian" / "netmux.command").read_text())
    script.chmod(0o755)
    return [str(script), "--config", host.source, "-q"]


def _env(sock: Path | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (REPO, SITE) if p))
    env[launch.SOCKET_ENV] = str(sock) if sock else ""
    return env


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = now()
    subprocess.run(argv, check=True, capture_output=True, env=env or _ENV)
    return now() - t0


@contextlib.contextmanager
def launcher(host: HostConfig) -> Iterator[Path]:
    """The warm launcher on the bench's own socket, as netmux-launcher.service runs it."""
    sock = Path(host.paths.run_dir) / "bench-launch.sock"
    proc = subprocess.Popen([PY, "-m", "netmux", "launcher", "--socket", str(sock)],
                            env=_env(None), stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = now() + 30
        while not sock.exists():
            if proc.poll() is not None or now() > deadline:
                raise RuntimeError("the launcher did not start")
            time.sleep(0.01)
        _ENV.update(_env(sock))
        _LAUNCHER[:] = [proc.pid]
        yield sock
    finally:
        _LAUNCHER.clear()
        proc.terminate()
        proc.wait(timeout=30)
        sock.unlink(missing_ok=True)


def start(host: HostConfig, runs: int) -> dict[str, Any]:
    cli = _cli(host)
    local = _env(None)
    keys = ("inproc_up", "inproc_down", "cli_up", "cli_down", "local_up", "local_down",
            "py_pass", "py_nosite", "imports")  # fmt: skip
    s: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(runs):
        t0 = now()
        workload.up(host, config.workload_from("bench-w0"), exec_cmd=False)
        s["inproc_up"].append(now() - t0)
        check_usable(host, "bench-w0")
        t0 = now()
        workload.down(host, "bench-w0")
        s["inproc_down"].append(now() - t0)
        s["cli_up"].append(_timed([*cli, "up", "bench-w1"]))
        check_usable(host, "bench-w1")
        s["cli_down"].append(_timed([*cli, "down", "bench-w1"]))
        s["local_up"].append(_timed([*cli, "up", "bench-w2"], local))
        check_usable(host, "bench-w2")
        s["local_down"].append(_timed([*cli, "down", "bench-w2"], local))
        s["py_pass"].append(_timed([PY, "-c", "pass"]))
        s["py_nosite"].append(_timed([PY, "-S", "-c", "pass"]))
        s["imports"].append(_timed([PY, "-c", "import netmux.cli, netmux.workload"]))
    out: dict[str, Any] = {k: summary(v) for k, v in s.items()}
    out["ratio_up"] = out["cli_up"]["median"] / out["inproc_up"]["median"]
    out["ratio_down"] = out["cli_down"]["median"] / out["inproc_down"]["median"]
    out["ratio_local_up"] = out["local_up"]["median"] / out["inproc_up"]["median"]
    out["ratio_local_down"] = out["local_down"]["median"] / out["inproc_down"]["median"]
    return out


def _parallel(argvs: list[list[str]], workers: int) -> float:
    t0 = now()
    with ThreadPoolExecutor(workers) as ex:
        run = lambda a: subprocess.run(a, capture_output=True, text=True, env=_ENV)  # noqa: E731
        for r in ex.map(run, argvs):
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(r.args)}: {r.stderr.strip()}")
    return now() - t0


def bulk(host: HostConfig, concurrent: int, running: int) -> dict[str, Any]:
    cli = _cli(host)
    out: dict[str, Any] = {"concurrent": concurrent, "running": running}
    one = []
    for _ in range(3):
        one.append(_timed([*cli, "up", "bench-w1"]))
        check_usable(host, "bench-w1")
        _timed([*cli, "down", "bench-w1"])
    out["one_up"] = summary(one)
    names = [f"bench-b{i}" for i in range(concurrent)]
    cpu0 = _cpu()
    out["concurrent_up_s"] = _parallel([[*cli, "up", n] for n in names], concurrent)
    # The floor of C at once: their CPU spread over every core, with no waiting at all.
    out["cpu_per_up_s"] = (_cpu() - cpu0) / concurrent
    out["cores"] = os.cpu_count() or 1
    out["concurrent_floor_s"] = out["cpu_per_up_s"] * concurrent / out["cores"]
    for n in names:
        check_usable(host, n)
    # The peer: C bare interpreters at once, as the client starts (`python3 -S`), doing
    # nothing. Every `netmux up` is one of them before it does anything (the client must
    # become the unit's main process), so this is a floor no launcher can lower.
    out["concurrent_python_s"] = _parallel([[PY, "-S", "-c", "pass"]] * concurrent, concurrent)
    out["concurrent_down_s"] = _parallel([[*cli, "down", n] for n in names], concurrent)
    out["ratio_concurrent_up"] = out["concurrent_up_s"] / out["one_up"]["median"]
    names = [f"bench-r{i}" for i in range(running)]
    saved = neigh_limits()  # ~2 neighbour entries per workload, one table for all netns
    want = (max(saved[0], 2 * running + 512), max(saved[1], 4 * running + 1024))
    Path(f"{NEIGH}2").write_text(f"{want[0]}\n")
    Path(f"{NEIGH}3").write_text(f"{want[1]}\n")
    try:
        t0 = now()
        for n in names:
            workload.up(host, config.workload_from(n), exec_cmd=False)
        out["inproc_up_all_s"] = now() - t0
        _at_scale(host, cli, names, out)
    finally:
        Path(f"{NEIGH}2").write_text(f"{saved[0]}\n")
        Path(f"{NEIGH}3").write_text(f"{saved[1]}\n")
    return out


def _at_scale(host: HostConfig, cli: list[str], names: list[str], out: dict[str, Any]) -> None:
    out["ls"] = summary([_timed([*cli, "ls"]) for _ in range(3)])
    out["status"] = summary([_timed([*cli, "status"]) for _ in range(3)])
    out["status_one"] = summary([_timed([*cli, "status", names[-1]]) for _ in range(3)])
    t0 = now()
    subprocess.run([*cli, "down", *names], check=True, capture_output=True, env=_ENV)
    out["down_all_s"] = now() - t0
    left = [n for n in names if workload.read_state(host, n) is not None]
    if left:
        raise RuntimeError(f"left after down: {left[:5]}")


def report(res: dict[str, Any]) -> str:
    s = res["start"]
    rows = [
        [label, s[k]["n"], ms(s[k]["median"]), ms(s[k]["p95"])]
        for k, label in (
            ("inproc_up", "up → usable global + default route (in-process)"),
            ("cli_up", "up through the command, warm launcher (end to end)"),
            ("local_up", "up through the command, no launcher"),
            ("inproc_down", "down (in-process)"),
            ("cli_down", "down through the command, warm launcher"),
            ("local_down", "down through the command, no launcher"),
            ("py_pass", "peer: python3 -c pass"),
            ("py_nosite", "peer: python3 -S -c pass"),
            ("imports", "peer: python3 -c 'import netmux.cli, netmux.workload'"),
        )
    ]
    out = [table(rows, ["start", "n", "median ms", "p95 ms"])]
    out.append(
        f"ratio command / in-process: up {s['ratio_up']:.2f}, down {s['ratio_down']:.2f}"
        f" (no launcher: up {s['ratio_local_up']:.2f}, down {s['ratio_local_down']:.2f})"
    )
    if "bulk" in res:
        b = res["bulk"]
        out.append("")
        brows = [
            ["one `netmux up` (median of 3)", ms(b["one_up"]["median"])],
            [f"{b['concurrent']} `netmux up` at once → all usable", ms(b["concurrent_up_s"])],
            [f"peer: {b['concurrent']} `python3 -S -c pass` at once", ms(b["concurrent_python_s"])],
            [f"{b['concurrent']} `netmux down` at once", ms(b["concurrent_down_s"])],
            [f"`netmux ls` at {b['running']} running (median of 3)", ms(b["ls"]["median"])],
            [f"`netmux status` at {b['running']}", ms(b["status"]["median"])],
            [f"`netmux status NAME` at {b['running']}", ms(b["status_one"]["median"])],
            [f"`netmux down` of {b['running']} (one command)", ms(b["down_all_s"])],
        ]
        out.append(table(brows, ["bulk", "ms"]))
        out.append(
            f"ratio {b['concurrent']} at once / one: {b['ratio_concurrent_up']:.2f}; the bare"
            f" interpreters alone: {b['concurrent_python_s'] / b['one_up']['median']:.2f}"
        )
        out.append(
            f"CPU per `up` (client + worker): {ms(b['cpu_per_up_s'])} ms; the floor for "
            f"{b['concurrent']} at once on {b['cores']} cores: "
            f"{ms(b['concurrent_floor_s'])} ms = "
            f"{b['concurrent_floor_s'] / b['one_up']['median']:.1f}x one"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="start rounds")
    ap.add_argument("--concurrent", type=int, default=50, help="`up`s at once")
    ap.add_argument("--running", type=int, default=500, help="workloads for ls/status/down")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few of everything")
    ap.add_argument(
        "--raise-limits", action="store_true", help="accepted (this bench always raises them)"
    )
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/launch.py: run as root", file=sys.stderr)
        return 1
    if args.quick:
        args.runs, args.concurrent, args.running = 3, 10, 30
    compile_checkout()
    journal.set_quiet(True)
    res: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    host = setup()
    try:
        t0 = now()
        with launcher(host):
            res["start"] = start(host, args.runs)
            res["bulk"] = bulk(host, args.concurrent, args.running)
        res["seconds"] = now() - t0
    finally:
        cleanup(host)
    text = report(res)
    print(text)
    print(f"\nwritten: {write_results('launch', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
