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

from . import become, journal, launch, sd


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
        os._exit(rc)


class _Spare:
    """A worker forked ahead of its request, waiting for the connection on a socketpair:
    the fork (2-3 ms of copying the launcher's page tables, measured) is then off the
    request's path. Not per workload: one at a time, for whichever request comes next."""

    def __init__(self, listening: socket.socket, run: Callable[[list[str]], int]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            listening.close()
            ours.close()
            try:
                _, fds = launch.recv(theirs)
            except OSError:
                fds = []
            theirs.close()
            if len(fds) != 1:  # the launcher stops: nothing to serve
                os._exit(0)
            _worker_exit(socket.socket(fileno=fds[0]), run)
        theirs.close()
        self.sock = ours

    def take(self, conn: socket.socket) -> bool:
        """Hand `conn` to the spare; False if it is gone."""
        try:
            launch.send(self.sock, {"conn": 1}, [conn.fileno()])
        except OSError:
            return False
        finally:
            self.sock.close()
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def serve(
    path: str, run: Callable[[list[str]], int], run_parser: Callable[[], Any] | None = None
) -> int:
    """Accept requests until SIGTERM; each one is served by a fork (`worker`) that calls
    `run` (the CLI's main) with the request's arguments (`run_parser`: its parser)."""
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
    spare = _Spare(sock, run)
    while not stopping:
        try:
            conn, _ = sock.accept()
        except OSError:
            if stopping:
                break
            raise
        if not spare.take(conn):  # it died meanwhile: a fork for this one, as the spare is
            _serve_in_fork(conn, sock, run)
        conn.close()
        spare = _Spare(sock, run)  # forked while the request runs, not when the next comes
    spare.close()
    return 0
