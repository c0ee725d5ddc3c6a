"""Becoming the workload: enter its namespace, see its resolv.conf, drop privileges, exec.

Every path that ends in a workload's command goes through `execute`: `netmux up` run
locally, `netmux exec`, a command-less unit's hold (`sleep infinity`), and the launcher's
client (netmux/launch.py), which receives the same `Exec` from the warm launcher
(netmux/launcher.py) and carries it out as the unit's main process. So this module is
import-light on purpose: the client runs it before anything else of netmux is loaded.

Inside the launcher's worker `handoff` does not exec: the worker is not the process that
must become the workload, so the hook it installs sends the `Exec` to its client instead.
"""

from __future__ import annotations

import os
import pwd
import sys

from . import syscalls
from .errors import StateError

TYPE_CHECKING = False  # typing itself is ~7 ms of the client's imports
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

NETNS_ETC = "/etc/netns"
# What a workload's command runs without (unless `sys_admin = true`): with it, root
# in the workload could remount its unit's read-only /proc/sys, /sys and /usr writable
# (measured: it changed a host sysctl) and setns into another workload's namespace
# through /proc/PID/ns/net of a root process there.
CAP_SYS_ADMIN = 21


class Exec:
    """What a process must do to become workload `name`'s command. Plain data: the
    launcher sends it as a dict (`as_json`/`from_json`), fds travel beside it. (A plain
    class: dataclasses and typing cost the client ~10 ms of imports.)"""

    __slots__ = ("argv", "drop_caps", "env", "gid", "name", "netns", "pass_fds", "path", "user")

    def __init__(
        self,
        name: str,
        argv: tuple[str, ...],
        env: Mapping[str, str] | None = None,
        user: str | None = None,  # drop to this user (its groups, HOME and directory)
        gid: int | None = None,
        pass_fds: tuple[int, ...] = (),  # kept open across exec at these numbers
        netns: bool = True,  # False: a hold (`sleep infinity`) stays in the unit's namespace
        path: str | None = None,  # the program when it is not argv[0] (the hold's name)
        drop_caps: tuple[int, ...] = (),  # out of the bounding set before exec
    ) -> None:
        self.name, self.argv, self.env = name, tuple(argv), dict(env or {})
        self.user, self.gid, self.pass_fds = user, gid, tuple(pass_fds)
        self.netns, self.path, self.drop_caps = netns, path, tuple(drop_caps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Exec) and self.as_json() == other.as_json()

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": list(self.argv),
            "env": dict(self.env),
            "user": self.user,
            "gid": self.gid,
            "pass_fds": list(self.pass_fds),
            "netns": self.netns,
            "path": self.path,
            "drop_caps": list(self.drop_caps),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Exec:
        return cls(
            name=str(d["name"]),
            argv=tuple(str(a) for a in d["argv"]),
            env={str(k): str(v) for k, v in dict(d["env"]).items()},
            user=d.get("user"),
            gid=d.get("gid"),
            pass_fds=tuple(int(f) for f in d.get("pass_fds", ())),
            netns=bool(d.get("netns", True)),
            path=d.get("path"),
            drop_caps=tuple(int(c) for c in d.get("drop_caps", ())),
        )


# The launcher's worker sets these (netmux/launcher.py); elsewhere they stay None.
_remote: Callable[[Exec, Callable[[], None] | None], None] | None = None
_main_pid: int | None = None
_main_unit: str | None = None


def set_remote(
    hook: Callable[[Exec, Callable[[], None] | None], None] | None,
    main_pid: int | None,
    main_unit: str | None = None,
) -> None:
    """In the launcher's worker: `handoff` calls `hook` instead of exec'ing, and the
    workload's main process (recorded in its state) is the client's `main_pid`, in
    systemd unit `main_unit` (what phonebookd follows)."""
    global _remote, _main_pid, _main_unit
    _remote, _main_pid, _main_unit = hook, main_pid, main_unit


def main_pid() -> int:
    """The process that is or becomes the workload's main process."""
    return _main_pid if _main_pid is not None else os.getpid()


def acting_for_unit() -> str | None:
    """The unit this process works for when it is not in it (the launcher's worker)."""
    return _main_unit


def handoff(ex: Exec, undo: Callable[[], None] | None = None) -> None:
    """Become `ex` here, or hand it to the launcher's client. Does not return. `undo`
    removes what was built for `ex` if no process is left to become it (the client is
    gone: its unit was stopped or timed out meanwhile)."""
    if _remote is not None:
        _remote(ex, undo)
        raise AssertionError("the launcher's hook returned")  # pragma: no cover
    execute(ex)


def user_env(
    user: pwd.struct_passwd | None, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a command run as `user`: this one with HOME, USER, LOGNAME, SHELL."""
    out = dict(os.environ if env is None else env)
    if user is not None:
        out.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        if user.pw_shell:
            out["SHELL"] = user.pw_shell
    return out


def drop_capabilities(caps: tuple[int, ...], name: str) -> None:
    """Gone for good, bounding set included (before drop_privileges: that needs CAP_SETPCAP).
    StateError if that is refused: the command must not run with what it should lack."""
    for cap in caps:
        try:
            syscalls.drop_capability(cap)
        except OSError as e:
            raise StateError(f"workload {name}: {e.strerror}; set sys_admin = true in its "
                             "file to run it with CAP_SYS_ADMIN") from None  # fmt: skip


def drop_privileges(user: pwd.struct_passwd | None, gid: int | None) -> None:
    if user is None:
        if gid is not None:
            os.setgid(gid)
        return
    g = gid if gid is not None else user.pw_gid
    os.initgroups(user.pw_name, g)
    os.setgid(g)
    os.setuid(user.pw_uid)


def resolv_path(name: str, root: str = NETNS_ETC) -> str:
    """NAME's resolv.conf, which `ip netns exec NAME` also binds (netmux/resolv.py)."""
    return f"{root}/{name}/resolv.conf"


def bind_resolv(name: str, root: str = NETNS_ETC) -> None:
    """In this process only (right before exec): NAME's resolv.conf over /etc/resolv.conf,
    like `ip netns exec`. Without the file nothing is done; a failure is a warning line."""
    p = resolv_path(name, root)
    if not os.path.exists(p):
        return
    try:
        syscalls.private_bind(p, "/etc/resolv.conf")
    except OSError as e:
        print(f"netmux: workload {name}: cannot bind {p} over /etc/resolv.conf: {e}",
              file=sys.stderr)  # fmt: skip


def execute(ex: Exec) -> None:
    """Enter ex.name's namespace in this (main) thread, see its resolv.conf, drop
    privileges, keep ex.pass_fds open and exec ex.argv. No return; StateError if the
    command cannot be executed."""
    user = None
    if ex.user is not None:
        try:
            user = pwd.getpwnam(ex.user)
        except KeyError:
            raise StateError(f"workload {ex.name}: no such user: {ex.user!r}") from None
    if ex.netns:
        syscalls.enter_netns_path(f"/run/netns/{ex.name}")
        bind_resolv(ex.name)
    drop_capabilities(ex.drop_caps, ex.name)
    drop_privileges(user, ex.gid)
    if user is not None:
        try:  # noqa: SIM105 (contextlib is an import the client need not pay)
            os.chdir(user.pw_dir)
        except OSError:
            pass
    for fd in ex.pass_fds:
        os.set_inheritable(fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    argv0 = ex.path or ex.argv[0]
    try:
        os.execvpe(argv0, list(ex.argv), dict(ex.env))
    except OSError as e:
        raise StateError(f"workload {ex.name}: cannot execute {argv0!r}: {e.strerror}") from e


def hold(name: str) -> Exec:
    """A command-less unit's main process: `sleep infinity` named netmux-hold-NAME (same
    PID, ~1 MB, no netmux code resident) until the unit stops; SIGTERM is a clean stop."""
    import shutil

    sleep = shutil.which("sleep") or "/bin/sleep"
    return Exec(name=name, argv=(f"netmux-hold-{name}", "infinity"), env=dict(os.environ),
                netns=False, path=sleep, drop_caps=(CAP_SYS_ADMIN,))  # fmt: skip
