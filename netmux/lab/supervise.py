"""Start, check and stop a daemon when systemd is not in charge (the lab, tests, benches).

A supervised daemon is known by a name and a run directory. `start` spawns it (inside a
network namespace through `nsenter --net=`, which execs, so the PID we spawn is the
daemon's) and records it in RUN_DIR/NAME.pid (the PID, like any pidfile) and
RUN_DIR/NAME.json (argv, namespace, PID and the process start time). Output goes to
RUN_DIR/NAME.log. `stop` signals exactly that process — by PID, through a pidfd, after
checking the start time so a recycled PID is never hit — and never anything by name.
All three calls are idempotent: starting a running daemon returns it, stopping a stopped
one does nothing.

Daemons that stay in the foreground are preferred (radvd -n, dhcpcd -B, kea, tayga -d,
unbound -d). A daemon that forks itself can be supervised too: pass `forks=True` and the
`pidfile` it writes; the PID is then read from there.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import files, journal, nsutil
from ..errors import StateError, UsageError

# Processes started by this Python process, so that stop() can reap them (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Daemon:
    """What RUN_DIR/NAME.json records about one running daemon."""

    name: str
    pid: int
    starttime: int  # field 22 of /proc/PID/stat: tells a recycled PID apart
    argv: tuple[str, ...]
    netns: str | None
    log: str

    @property
    def alive(self) -> bool:
        return _starttime(self.pid) == self.starttime


def _paths(name: str, run_dir: Path) -> tuple[Path, Path, Path]:
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"daemon name {name!r} is not allowed: a plain file name")
    return run_dir / f"{name}.pid", run_dir / f"{name}.json", run_dir / f"{name}.log"


def _starttime(pid: int) -> int | None:
    """The start time of a live (non-zombie) process, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def status(name: str, run_dir: Path) -> Daemon | None:
    """The daemon NAME if it is running (same PID and start time as recorded), else None."""
    _, state, _ = _paths(name, run_dir)
    try:
        raw = json.loads(state.read_text())
        d = Daemon(**{**raw, "argv": tuple(raw["argv"])})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return d if d.alive else None


def not_running(names: Sequence[str], run_dir: Path) -> list[str]:
    """For each daemon started in `run_dir` that no longer runs: its name, log and last lines.

    A timeout that waits on a daemon's work names this first: "no prefix" is a symptom,
    "kea6 died at ..." the cause.
    """
    out = []
    for name in names:
        _, state, log = _paths(name, run_dir)
        if state.exists() and status(name, run_dir) is None:
            out.append(f"daemon {name} is not running ({log}: {_tail(log)})")
    return out


def _wrap(argv: Sequence[str], netns: str | None) -> list[str]:
    if netns is None:
        return list(argv)
    path = nsutil.netns_path(netns) if "/" not in netns else Path(netns)
    if not path.exists():
        raise StateError(f"network namespace {netns!r} does not exist ({path})")
    return ["nsenter", f"--net={path}", "--", *argv]


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return " | ".join(text[-lines:]) or "(no output)"


def start(
    name: str,
    argv: Sequence[str],
    netns: str | None,
    run_dir: Path,
    *,
    pidfile: Path | None = None,
    forks: bool = False,
    timeout: float = 5.0,
    settle: float = 0.05,
    env: dict[str, str] | None = None,
) -> Daemon:
    """Start daemon NAME running argv in `netns` (None: here), unless it already runs.

    Ready means: `pidfile` (if given) exists and holds a PID, and the process has not died
    within `settle` seconds. With forks=True the spawned process must exit 0 and the
    daemon's PID is read from `pidfile`. A daemon that dies first raises StateError with
    the end of its log; nothing stays recorded then.
    """
    if not argv:
        raise UsageError(f"daemon {name}: empty command")
    if forks and pidfile is None:
        raise UsageError(f"daemon {name}: a forking daemon needs the pidfile it writes")
    for proc in list(_children.values()):  # reap daemons of ours that died meanwhile
        if proc.poll() is not None:
            _children.pop(proc.pid, None)
    running = status(name, run_dir)
    if running:
        return running
    pid_path, state, log = _paths(name, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_path.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    if pidfile is not None:
        pidfile.unlink(missing_ok=True)
    full = _wrap(argv, netns)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed with the caller's terminal
                env=env,
            )
        except FileNotFoundError as e:
            raise StateError(f"daemon {name}: cannot run {full[0]!r}: {e.strerror}") from None
    _children[proc.pid] = proc
    try:
        pid = _await_ready(name, proc, pidfile, forks, timeout, settle, log)
    except BaseException:
        _kill(proc.pid, _starttime(proc.pid))
        _reap(proc.pid)
        raise
    started = _starttime(pid)
    if started is None:
        raise StateError(f"daemon {name} exited at start: {_tail(log)}")
    d = Daemon(name, pid, started, tuple(argv), netns, str(log))
    files.write_atomic(state, json.dumps(asdict(d)) + "\n")
    pid_path.write_text(f"{pid}\n")
    journal.info(f"started {name} (pid {pid})", netns=netns)
    return d


def _await_ready(
    name: str,
    proc: subprocess.Popen[bytes],
    pidfile: Path | None,
    forks: bool,
    timeout: float,
    settle: float,
    log: Path,
) -> int:
    deadline = time.monotonic() + timeout
    if forks:
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise StateError(f"daemon {name} did not detach within {timeout:g}s") from None
        _children.pop(proc.pid, None)
        if rc != 0:
            raise StateError(f"daemon {name} failed to start (exit {rc}): {_tail(log)}")
    while pidfile is not None:
        pid = _read_pid(pidfile)
        if pid and (forks or pid == proc.pid):
            break
        if not forks and proc.poll() is not None:
            raise StateError(f"daemon {name} exited at start: {_tail(log)}")
        if time.monotonic() > deadline:
            raise StateError(f"daemon {name} did not write {pidfile} within {timeout:g}s")
        time.sleep(0.01)
    if forks:
        assert pidfile is not None
        pid = _read_pid(pidfile)
        assert pid is not None
    else:
        pid = proc.pid
    end = time.monotonic() + settle
    while time.monotonic() < end:
        if _starttime(pid) is None:
            raise StateError(f"daemon {name} exited at start: {_tail(log)}")
        time.sleep(0.01)
    return pid


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].isdigit() else None


def _kill(pid: int, starttime: int | None, timeout: float = 5.0) -> None:
    """SIGTERM the process if it is still the one we know; SIGKILL after `timeout`."""
    if starttime is None:
        return
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if _starttime(pid) != starttime:  # checked after the pidfd pins the process
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGTERM)
        if not select.select([fd], [], [], timeout)[0]:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def _await_group(pgid: int, timeout: float) -> None:
    """Wait until the process group the daemon led has no live member: its helpers
    (radvd's privsep child) exit after it, and one that still holds the daemon's locked
    pidfile makes the next start of the same daemon fail. The group is ours: start() made
    it a session (start_new_session), and it outlives the leader only through the
    daemon's own children. Zombies do not count (a subreaper may not have reaped them)."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _group_alive(pgid: int) -> bool:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":  # state, ppid, pgrp
            return True
    return False


def _reap(pid: int) -> None:
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(name: str, run_dir: Path, timeout: float = 5.0) -> bool:
    """Stop daemon NAME (by its recorded PID). True if it was running. Idempotent."""
    pid_path, state, _ = _paths(name, run_dir)
    d = status(name, run_dir)
    if d is not None:
        _kill(d.pid, d.starttime, timeout)
        _reap(d.pid)
        _await_group(d.pid, timeout)
        journal.info(f"stopped {name} (pid {d.pid})", netns=d.netns)
    pid_path.unlink(missing_ok=True)
    state.unlink(missing_ok=True)
    return d is not None
