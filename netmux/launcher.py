"""The warm launcher: `netmux up/down/ls/status` without an interpreter start each.

A fresh `netmux` costs ~0.1 s of interpreter and imports before it does ~25 ms of kernel
work (docs/benchmarks.md, "The launcher's own cost"). netmux-launcher.service (started by
its socket, netmux-launcher.socket) imports netmux once; for each request from the
command's client (netmux/launch.py) it forks a worker that:

- checks the caller is root (SO_PEERCRED) and works for the caller's unit: its events
  carry OBJECT_SYSTEMD_UNIT (journalctl -u finds them), phonebookd is told the unit
  (its stop removes the records), and what it built is removed if the caller is gone by
  the time it is done (its unit was stopped meanwhile). It does not join the caller's
  cgroup: a migration waits for an RCU grace period, 6-30 ms measured here, more than
  the rest of a request;
- takes the caller's stdio, environment and working directory, and runs the very same
  CLI (netmux/cli.py) with the caller's arguments;
- sends back what only the caller may do: sd_notify messages (netmux/sd.py relays them)
  and, for `up`, the `Exec` that makes the caller the workload's command
  (netmux/become.py), with the fds it needs (tap, DNS lifeline); else the exit status.

A netmux@ unit's workload is built before its request comes: when systemd makes the
unit's cgroup (netmux/unitwatch.py), the spare worker builds it (netmux/workload.py,
`prebuild`) while systemd still sets up the unit's sandbox, and the unit's request — its
caller's cgroup names the unit — goes to that worker, whose `up` takes the build if it
wants the same one. The cgroup's removal, or the worker's end, removes a build nobody took.

A fork shares nothing that matters between requests (each worker's netlink sockets,
namespaces and state are its own), and one worker per request lets many `up`s run at
once as separate processes would. The launcher is a process of its own unit, not per
workload: nothing of netmux stays resident in a workload's unit.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import become, journal, launch, sd, unitwatch


class _Handed(BaseException):
    """The worker gave its request's `Exec` to the client: nothing more to do here."""


def preload(parser: Callable[[], Any] | None = None) -> None:
    """What every request imports, imported once here; and what each one would do for
    the first time in a process (argparse's help lookups, tomllib's and config's first
    parse, a ruleset's first rendering), done once too: forks share all of it."""
    import netmux.firewall
    import netmux.phonebook.client
    import netmux.workload
    from netmux import config

    with contextlib.suppress(ImportError):  # journal.log's, on first use
        import systemd.journal  # noqa: F401
    with contextlib.suppress(Exception):  # python3-nftables absent: `up` reports it
        netmux.firewall._nft()  # loads libnftables once
    if parser is not None:
        p = parser()
        for argv in (["up", "x", "--", "true"], ["down", "x"], ["ls"], ["status", "x"]):
            p.parse_args(argv)
    config.resolve_hints()
    with contextlib.suppress(Exception):  # a broken config is each request's to report
        host = config.load_host(None)
        wl = config.workload_from("warm-up", None, "warm-up")
        netmux.firewall.render_workload(host, wl, ("02:00:00:00:00:01", "fe80::1"))


# --- the worker ---------------------------------------------------------------------------


def _peer(conn: socket.socket) -> tuple[int, int, int]:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class _Output:
    """The worker's stdout and stderr, as pipes a thread copies to the client as messages
    (`out`/`err`), which the client writes to its own: journald files a line under the
    process that wrote it into a stream, so the unit's stream must be written by the
    unit's process. Subprocesses inherit the pipes as they would the caller's stdio."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.readers: list[int] = []
        for target in (1, 2):
            r, w = os.pipe()
            os.dup2(w, target)
            os.close(w)
            self.readers.append(r)
        sys.stdout = os.fdopen(1, "w", closefd=False)
        sys.stderr = os.fdopen(2, "w", closefd=False)
        self.thread = threading.Thread(target=self._copy, name="output", daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        keys = dict(zip(self.readers, ("out", "err"), strict=True))
        while keys:
            ready, _, _ = select.select(list(keys), [], [])
            for fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    os.close(fd)
                    del keys[fd]
                    continue
                with contextlib.suppress(OSError):  # the caller is gone: nobody to tell
                    launch.send(self.conn, {keys[fd]: data})

    def close(self, timeout: float = 2.0) -> None:
        """Everything written so far reaches the client before what follows (the exit
        status, the Exec): close our ends and wait for the copy to drain."""
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        self.thread.join(timeout)  # a child still holding a pipe must not hold us up


def worker(conn: socket.socket, run: Callable[[list[str]], int]) -> int:
    """Serve one request on `conn` (in a fresh fork) with the CLI's `run`; the exit status
    of this process."""
    for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    pid, uid, _ = _peer(conn)
    msg, fds = launch.recv(conn)
    if msg is None or len(fds) != 3:
        return 2
    if uid != 0:
        os.write(fds[2], b"netmux: the launcher serves root only\n")
        launch.send(conn, {"exit": 2})
        return 2
    env = {str(k): str(v) for k, v in dict(msg.get("env", {})).items()}
    journal.set_stream(journal.is_stream(fds[2], env))  # the caller's stderr, not our pipe
    unit = sd.unit_of(pid)
    journal.set_unit(unit)
    os.dup2(fds[0], 0)
    for fd in fds:
        os.close(fd)
    output = _Output(conn)
    os.environ.clear()
    os.environ.update(env)
    with contextlib.suppress(OSError):
        os.chdir(str(msg.get("cwd", "/")))

    def relay(text: str, fds: list[int]) -> None:
        launch.send(conn, {"notify": text}, fds)

    def hand(ex: become.Exec, undo: Callable[[], None] | None) -> None:
        output.close()
        try:
            launch.send(conn, {"exec": ex.as_json()}, ex.pass_fds)
        except OSError as e:  # the caller is gone: nothing will become the workload
            journal.warning(f"workload {ex.name}: its `netmux up` went away ({e}); removing it",
                            workload=ex.name)  # fmt: skip
            if undo is not None:
                undo()
        raise _Handed

    sd.set_relay(relay)
    become.set_remote(hand, pid, unit or None)
    gc.disable()  # a worker lives for one request: a collection would only copy pages
    rc: Any
    try:
        rc = run([str(a) for a in msg.get("argv", [])])
    except _Handed:
        return 0
    except SystemExit as e:  # argparse's usage errors and --help
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    output.close()
    launch.send(conn, {"exit": int(rc)})
    return int(rc)


# --- the launcher ---------------------------------------------------------------------------


def _reap(signum: int = 0, frame: object = None) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def listener(path: str) -> socket.socket:
    """The socket systemd passed (netmux-launcher.socket), else one bound at `path`."""
    for _, fd in sd.listen_fds():
        return socket.socket(fileno=fd)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)  # root's alone: the worker runs any of its commands as root
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(128)
    return s


def _serve_in_fork(
    conn: socket.socket, listening: socket.socket, run: Callable[[list[str]], int]
) -> int:
    """Fork a worker for `conn`; its PID (in the worker: no return)."""
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        listening.close()
        _close_ends()
        _worker_exit(conn, run)
    return child


def _worker_exit(conn: socket.socket, run: Callable[[list[str]], int]) -> None:
    rc = 70
    try:
        rc = worker(conn, run)
    except BaseException as e:  # a bug: say it on the caller's stderr, then go
        with contextlib.suppress(Exception):
            print(f"netmux: launcher worker: {type(e).__name__}: {e}", file=sys.stderr)
            launch.send(conn, {"exit": 70})
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(Exception):  # built ahead for a request that did not use it
            sys.modules["netmux.workload"].discard_prebuilt()
        os._exit(rc)


# Builds ahead at a time (built or building, not yet taken). Building ahead is for one
# start's latency; when many units start at once (boot), builds of all of them together
# slowed the others' starts: 100 at once answered in DNS after 6.96 s with every one
# built ahead, 5.01 s with none (bench/systemd_dns.py --many).
AHEAD = 4


def _prebuild(name: str) -> None:
    """Build workload NAME ahead of its unit's `netmux up` (netmux/unitwatch.py says when);
    what goes wrong is that `up`'s to report."""
    from netmux import config, workload

    journal.set_unit(f"{unitwatch.PREFIX}{name}{unitwatch.SUFFIX}")
    try:
        workload.prebuild(config.load_host(None), name)
    except Exception as e:  # the unit's own `up` does it again and says why
        journal.debug(f"launcher: no build ahead for {name}: {type(e).__name__}: {e}")


# The launcher's ends of its spares' socketpairs. Every fork inherits them: a child
# closes them first, or closing one here would not reach its spare as EOF (the spare
# that built ahead for a unit gone meanwhile would wait for ever).
_ENDS: set[int] = set()


def _close_ends() -> None:
    for fd in _ENDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _ENDS.clear()


class _Spare:
    """A worker forked ahead of its request, waiting for the connection on a socketpair:
    the fork (2-3 ms of copying the launcher's page tables, measured) is then off the
    request's path. Not per workload: one at a time, for whichever request comes next —
    or told to build a workload ahead (`prebuild`), it waits for that unit's request."""

    def __init__(self, listening: socket.socket, run: Callable[[list[str]], int]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            listening.close()
            ours.close()
            _close_ends()
            _spare_child(theirs, run)
        theirs.close()
        self.sock = ours
        _ENDS.add(ours.fileno())

    def prebuild(self, name: str) -> bool:
        """Build workload NAME now; its unit's request is then handed here (`take`)."""
        try:
            launch.send(self.sock, {"prebuild": name})
        except OSError:
            self.close()
            return False
        return True

    def take(self, conn: socket.socket) -> bool:
        """Hand `conn` to the spare; False if it is gone."""
        try:
            launch.send(self.sock, {"conn": 1}, [conn.fileno()])
        except OSError:
            return False
        finally:
            self.close()
        return True

    def close(self) -> None:
        _ENDS.discard(self.sock.fileno())
        with contextlib.suppress(OSError):
            self.sock.close()


def _spare_child(sock: socket.socket, run: Callable[[list[str]], int]) -> None:
    """A spare's life: a request, or a build ahead and then its request; nothing (the
    launcher stopped, or the unit built ahead became inactive without asking)."""
    built = False
    try:
        msg, fds = launch.recv(sock)
        if msg is not None and "prebuild" in msg and not fds:
            built = True
            _prebuild(str(msg["prebuild"]))
            msg, fds = launch.recv(sock)
    except OSError:
        fds = []
    sock.close()
    if len(fds) != 1:
        if built:
            from netmux import workload

            workload.discard_prebuilt()
        os._exit(0)
    _worker_exit(socket.socket(fileno=fds[0]), run)


def _watch() -> unitwatch.UnitWatch | None:
    """The cgroup directory of netmux@ units, watched (None: not found, not watchable)."""
    try:
        with open("/proc/self/cgroup") as f, open("/proc/self/mountinfo") as g:
            where = unitwatch.units_dir(f.read(), g.read())
        return unitwatch.UnitWatch(where) if where else None
    except OSError as e:
        journal.debug(f"launcher: not watching for netmux@ units: {e}")
        return None


def serve(
    path: str,
    run: Callable[[list[str]], int],
    run_parser: Callable[[], Any] | None = None,
    prebuild: bool = True,
) -> int:
    """Accept requests until SIGTERM; each one is served by a fork (`worker`) that calls
    `run` (the CLI's main) with the request's arguments (`run_parser`: its parser). With
    `prebuild`, a netmux@ unit's workload is built as systemd starts the unit."""
    preload(run_parser)
    sock = listener(path)
    gc.collect()
    gc.freeze()  # what is loaded now is never collected: forks do not copy it to look
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        sock.close()  # accept() fails at once

    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sd.notify(ready="1", status=f"serving {path}")
    journal.info(f"launcher: serving {path}")
    watch = _watch() if prebuild else None
    ahead: dict[str, _Spare] = {}  # unit -> the spare that built its workload ahead
    spare = _Spare(sock, run)
    while not stopping:
        try:
            ready = select.select([sock] + ([watch] if watch else []), [], [])[0]
        except (OSError, ValueError):  # ValueError: `stop` closed the socket
            if stopping:
                break
            raise
        if watch is not None and watch in ready:
            for created, name in watch.read():
                unit = f"{unitwatch.PREFIX}{name}{unitwatch.SUFFIX}"
                if not created:
                    with contextlib.suppress(KeyError):
                        ahead.pop(unit).close()  # it undoes its build and exits
                elif unit not in ahead and len(ahead) < AHEAD and spare.prebuild(name):
                    ahead[unit] = spare
                    spare = _Spare(sock, run)
        if sock not in ready:
            continue
        try:
            conn, _ = sock.accept()
        except OSError:
            if stopping:
                break
            raise
        built = ahead.pop(sd.unit_of(_peer(conn)[0]), None) if ahead else None
        if built is None or not built.take(conn):
            if not spare.take(conn):  # it died meanwhile: a fork for this one, as it is
                _serve_in_fork(conn, sock, run)
            spare = _Spare(sock, run)  # forked while the request runs, not when the next comes
        conn.close()
    spare.close()
    for s in ahead.values():
        s.close()
    if watch is not None:
        watch.close()
    return 0
