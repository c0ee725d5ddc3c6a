"""The launcher's client: how the `netmux` command (netmux/__main__.py) asks first.

Run as root, `netmux up|down|ls|status ...` hands its arguments, environment, working
directory and stdio to the warm launcher (netmux/launcher.py, netmux-launcher.service,
socket-activated), which runs the very same CLI in a fork of a process that has netmux
loaded, in this process's cgroup (so the journal and systemd count it as this unit's).
What only this process may do comes back to it: the sd_notify messages (systemd takes them
from the unit's main process alone), and for `up` becoming the workload's command
(netmux/become.py) — so the workload is still the unit's main process and no netmux
process stays per workload. Everything else, and every command when there is no launcher
(not root, no socket, `NETMUX_LAUNCH_SOCKET=` empty), runs the CLI here: the same code,
~0.1 s more of interpreter and imports (docs/benchmarks.md, "The launcher's own cost").

Import-light on purpose: this module (and, when there is something to send or become,
netmux.sd, netmux.become and netmux.syscalls) is all the client loads.
"""

from __future__ import annotations

import _socket as socket  # socket.py imports enum and more: ~6 ms of the client's start
import array
import marshal
import os
import sys

TYPE_CHECKING = False  # typing itself is ~7 ms of the client's imports
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

SOCKET = "/run/netmux/launch.sock"
SOCKET_ENV = "NETMUX_LAUNCH_SOCKET"
# The commands the launcher runs; the rest (run, exec, mux, lab, ...) keep their own
# process: they wait on children, forward signals or outlive a request.
COMMANDS = frozenset({"up", "down", "ls", "status"})
MAX_FDS = 16
MAX_MESSAGE = 1 << 20


def socket_path(env: Mapping[str, str] = os.environ) -> str:
    return env.get(SOCKET_ENV, SOCKET)


# --- the wire: one dict per SOCK_SEQPACKET message, fds beside it ---------------------------
# marshal (built in: json's import alone costs the client ~10 ms); both ends are root's and
# the same interpreter (the socket is 0600 and the worker checks the peer first).


def send(sock: socket.socket, obj: dict[str, Any], fds: Sequence[int] = ()) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([marshal.dumps(obj)], anc)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the fds that came with it (non-inheritable); (None, []) at EOF."""
    fds = array.array("i")
    data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize),
                                       socket.MSG_CMSG_CLOEXEC)  # fmt: skip
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    got = list(fds)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in got:
            os.close(fd)
        raise OSError("netmux launcher: a message was truncated")
    if not data:
        for fd in got:
            os.close(fd)
        return None, []
    obj = marshal.loads(data)
    if not isinstance(obj, dict):
        raise OSError("netmux launcher: a message that is not a dict")
    return obj, got


# --- the client -----------------------------------------------------------------------------


def _connect(path: str) -> socket.socket | None:
    if not path:
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError:  # no launcher (ENOENT), a stale socket (ECONNREFUSED), ...
        s.close()
        return None
    return s


def _place(fds: list[int], at: Sequence[int]) -> None:
    """Give the received fds the numbers the command's arguments name (the tap's fd=N)."""
    tmp = [os.dup(fd) if fd in at else fd for fd in fds]  # never clobber one not yet moved
    for fd, t in zip(fds, tmp, strict=True):
        if fd != t:
            os.close(fd)
    for t, want in zip(tmp, at, strict=True):
        if t != want:
            os.dup2(t, want)  # inheritable, as the command needs it
            os.close(t)
        else:
            os.set_inheritable(t, True)


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand of `netmux ARGV`, past the global options (cli.build_parser's)."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config":
            i += 2
        elif a.startswith("--config=") or a in ("--debug", "-q", "--quiet"):
            i += 1
        else:
            return a
    return None


def remote(argv: Sequence[str]) -> int | None:
    """Run `netmux ARGV` through the launcher: its exit status, or no return when this
    process became the workload; None when there is no launcher to ask."""
    command = command_of(argv)
    if os.geteuid() != 0 or command not in COMMANDS:
        return None
    sock = _connect(socket_path())
    if sock is None:
        return None
    held: list[tuple[str, list[int]]] = []  # sent once the worker is done (see _flush)
    try:
        send(sock, {"argv": list(argv), "env": dict(os.environ), "cwd": os.getcwd()}, [0, 1, 2])
        while True:
            msg, fds = recv(sock)
            if msg is not None and "notify" in msg:
                held.append((str(msg["notify"]), fds))
                continue
            if msg is not None and ("out" in msg or "err" in msg):
                _write(1 if "out" in msg else 2, msg.get("out", msg.get("err", b"")))
                continue
            if msg is not None and "exec" in msg:
                return _become(command, msg["exec"], fds, sock, held)
            _flush(command, held)
            if msg is None:
                print(f"netmux {command}: the launcher's worker ended without an answer "
                      f"(journalctl -u netmux-launcher)", file=sys.stderr)  # fmt: skip
                return 1
            return int(msg.get("exit", 1))
    finally:
        sock.close()


def _write(fd: int, data: object) -> None:
    if isinstance(data, bytes):
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError:
            pass  # our own stdout is gone: as for any command


def _flush(command: str, held: list[tuple[str, list[int]]]) -> None:
    """Send the worker's sd_notify messages from this process, in order, right before it
    exits or execs the workload: READY=1 then means what it means locally, the command is
    about to become the unit's main process (not seconds later, after a slow reply).
    netmux.sd is imported only then: `down`, `ls` and `status` have none to send."""
    if not held:
        return
    from . import sd

    notifier = sd.Notifier()
    for text, fds in held:
        try:
            notifier.notify(text, fds)
        except OSError as e:
            print(f"netmux {command}: sd_notify: {e}", file=sys.stderr)
        finally:
            for fd in fds:
                os.close(fd)
    held.clear()
    notifier.close()


def _become(
    command: str,
    plan: dict[str, Any],
    fds: list[int],
    sock: socket.socket,
    held: list[tuple[str, list[int]]],
) -> int:
    from . import become
    from .errors import NetmuxError

    ex = become.Exec.from_json(plan)
    sock.close()
    _place(fds, ex.pass_fds)
    _flush(command, held)  # everything loaded: exec follows at once
    try:
        become.execute(ex)
    except (NetmuxError, OSError) as e:
        print(f"netmux {command}: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    return 127  # not reached
