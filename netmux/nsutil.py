"""The only module that calls setns(2): run Python code inside a network namespace.

Namespaces are iproute2-compatible: a named namespace is a bind mount at /run/netns/NAME,
so `ip netns exec`, `ip -n`, `nsenter --net=` and systemd's NetworkNamespacePath= all work.
Creating and deleting named namespaces is pyroute2's job (links.py); this module enters
them. Work runs in a short-lived thread that enters the namespace, so the caller's thread
never changes namespace. The libc calls themselves are netmux/syscalls.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from . import syscalls
from .syscalls import CLONE_NEWNET, MNT_DETACH, MS_BIND, MS_REC, MS_SHARED, mount, setns, umount2

__all__ = ["CLONE_NEWNET", "setns"]
NETNS_DIR = Path("/run/netns")

T = TypeVar("T")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def open_netns(name_or_path: str | os.PathLike[str]) -> int:
    """Open a namespace by name (/run/netns/NAME) or by path (/proc/PID/ns/net)."""
    p = Path(name_or_path)
    if not p.is_absolute():
        p = netns_path(str(name_or_path))
    return os.open(p, os.O_RDONLY | os.O_CLOEXEC)


def run_in_netns(netns: str | os.PathLike[str] | int | None, fn: Callable[[], T]) -> T:
    """Call fn() in a thread that has entered `netns` (a name, a path or an open fd).

    None means the caller's own namespace (fn runs directly). Exceptions propagate.
    """
    if netns is None:
        return fn()
    fd = netns if isinstance(netns, int) else open_netns(netns)

    def entered() -> T:
        setns(fd)
        return fn()

    try:
        return _in_thread(entered, "netns")
    finally:
        if not isinstance(netns, int):
            os.close(fd)


def run_in_each_netns(names: Sequence[str], fn: Callable[[str], T]) -> list[T | OSError]:
    """fn(name) inside each named namespace in turn, from one short-lived thread that moves
    from one to the next (a thread may setns as often as it likes), so listing many
    workloads costs one thread, not one each. An OSError (no such namespace, ...) is that
    name's result; anything else propagates."""

    def each() -> list[T | OSError]:
        out: list[T | OSError] = []
        for name in names:
            try:
                fd = open_netns(name)
                try:
                    setns(fd)
                finally:
                    os.close(fd)
                out.append(fn(name))
            except OSError as e:
                out.append(e)
        return out

    return _in_thread(each, "netns-each") if names else []


def run_in_new_netns(fn: Callable[[int], T]) -> T:
    """Call fn(netns_fd) in a thread inside a fresh, anonymous namespace (for probes).

    The namespace dies with the thread unless fn keeps something in it alive.
    """

    def fresh() -> T:
        unshare_netns()
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return fn(fd)
        finally:
            os.close(fd)

    return _in_thread(fresh, "netns-new")


def _in_thread(fn: Callable[[], T], name: str) -> T:
    """fn() in a short-lived thread (whose namespace fn may change); exceptions propagate."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # re-raised in the caller
            failure.append(e)

    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    return result[0]


def sysctl_path(key: str) -> Path:
    """'net.ipv6.conf.eth0.stable_secret' -> /proc/sys/net/ipv6/conf/eth0/stable_secret.

    Interface names may contain dots, so the conf.IF part is split around the known shape.
    """
    parts = key.split(".")
    if len(parts) >= 5 and parts[0] == "net" and parts[2] in ("conf", "neigh"):
        ifname = ".".join(parts[3:-1])
        return Path("/proc/sys/net", parts[1], parts[2], ifname, parts[-1])
    return Path("/proc/sys", *parts)


def write_sysctls(netns: str | os.PathLike[str] | int | None, items: list[tuple[str, str]]) -> None:
    """Write sysctls in order, inside `netns` (the order matters for some, see links.py)."""

    def apply() -> None:
        for key, value in items:
            sysctl_path(key).write_text(f"{value}\n")

    run_in_netns(netns, apply)


def read_sysctl(netns: str | os.PathLike[str] | int | None, key: str) -> str | None:
    """Read one sysctl inside `netns`; None if it is unreadable (e.g. an unset secret: EIO)."""

    def read() -> str | None:
        try:
            return sysctl_path(key).read_text().strip()
        except OSError as e:
            if e.errno in (errno.EIO, errno.ENOENT):
                return None
            raise

    return run_in_netns(netns, read)


def unshare_netns() -> None:
    """Give the calling thread a new, empty network namespace."""
    syscalls.unshare(CLONE_NEWNET, "unshare(CLONE_NEWNET)")


def create_named_netns(name: str, prepare: Callable[[], None] | None = None) -> int:
    """Create /run/netns/NAME like `ip netns add` (FileExistsError if the name is taken);
    return an open fd of the new namespace (the caller closes it).

    A short-lived thread unshares, runs `prepare()` inside the still nameless namespace,
    then bind-mounts /proc/thread-self/ns/net (bind_netns, without pyroute2's fork);
    the caller's thread never changes namespace. What `prepare` does (netmux's ownership
    mark) is therefore in place before the name exists: a SIGKILL at any point leaves
    either no name or a marked namespace.
    """

    def attach() -> int:
        unshare_netns()
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if prepare is not None:
                prepare()
            bind_netns(netns_path(name), "/proc/thread-self/ns/net")
        except BaseException:
            os.close(fd)
            raise
        return fd

    try:
        return _in_thread(attach, "netns-create")
    except FileExistsError:
        raise
    except BaseException:
        # the mount point may exist without a mount: remove it, nothing half-built
        with contextlib.suppress(OSError):
            if not is_netns(netns_path(name)):
                netns_path(name).unlink()
        raise


def bind_netns(path: Path, source: str) -> None:
    """Give the namespace at `source` the name `path` as `ip netns add` does (iproute2's
    code, as pyroute2.netns ports it): /run/netns a shared mount (bound onto itself
    first if it is not a mount point yet), an empty file, the namespace bound onto it.
    FileExistsError if the name is taken."""
    d = path.parent
    d.mkdir(parents=True, exist_ok=True)
    bdir = str(d)
    done = False
    while (err := mount("none", bdir, "none", MS_SHARED | MS_REC, "")) != 0:
        if done or (err := mount(bdir, bdir, "none", MS_BIND | MS_REC, "")) != 0:
            raise OSError(err, f"make {d} a shared mount: {os.strerror(err)}")
        done = True
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    err = mount(source, str(path), "none", MS_BIND, "")
    if err:
        raise OSError(err, f"bind {source} onto {path}: {os.strerror(err)}")


def netns_id(netns: str | os.PathLike[str] | int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a namespace (a name, a path or an open fd): its identity while
    it lives. None when there is no such namespace (or only an empty mount point)."""
    try:
        if isinstance(netns, int):
            st = os.fstat(netns)
        else:
            p = Path(netns)
            st = (p if p.is_absolute() else netns_path(str(netns))).stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if _is_nsfs(st) else None


_NSFS_DEV: list[int] = []


def _is_nsfs(st: os.stat_result) -> bool:
    """A namespace file (on nsfs), not the empty file a killed `ip netns add` leaves."""
    if not _NSFS_DEV:
        _NSFS_DEV.append(os.stat("/proc/self/ns/net").st_dev)
    return st.st_dev == _NSFS_DEV[0]


def is_netns(path: str | os.PathLike[str]) -> bool:
    return netns_id(path) is not None


def pids_in_netns(netns: str | os.PathLike[str] | int) -> list[int]:
    """PIDs whose (main thread's) network namespace is `netns`. Looked at, not signalled."""
    target = netns_id(netns)
    return pids_by_netns().get(target, []) if target is not None else []


def pids_by_netns() -> dict[tuple[int, int], list[int]]:
    """Every process by the identity (netns_id) of its network namespace: one pass over
    /proc, so listing many workloads costs one scan."""
    found: dict[tuple[int, int], list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = os.stat(f"/proc/{d}/ns/net")
            except OSError:
                continue  # gone, or a zombie
            found.setdefault((st.st_dev, st.st_ino), []).append(int(d))
    for pids in found.values():
        pids.sort()
    return found


def remove_named_netns(name: str) -> bool:
    """Unmount and remove /run/netns/NAME (idempotent); True if something was there."""
    path = netns_path(name)
    err = umount2(str(path), MNT_DETACH)
    if err and err not in (errno.EINVAL, errno.ENOENT):
        raise OSError(err, f"umount {path}: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def shares_init_mounts() -> bool:
    """Whether this process sees PID 1's mounts (a mount made here is the host's too).
    Without the right to look at PID 1's namespace (no CAP_SYS_PTRACE: netmux@.service),
    by comparing the ID of the mount at "/" (a mount namespace copies every mount under
    new IDs) in PID 1's mountinfo and ours."""
    try:
        mine, init = os.stat("/proc/self/ns/mnt"), os.stat("/proc/1/ns/mnt")
        return (mine.st_dev, mine.st_ino) == (init.st_dev, init.st_ino)
    except OSError:
        pass
    try:
        ours = root_mount_id(Path("/proc/self/mountinfo").read_text().splitlines())
        init_id = root_mount_id(Path("/proc/1/mountinfo").read_text().splitlines())
    except OSError:
        return True
    return ours is None or init_id is None or ours == init_id


def root_mount_id(mountinfo: Sequence[str]) -> str | None:
    """The mount ID of "/" (the last mount there) in /proc/PID/mountinfo's lines. Pure."""
    found = None
    for line in mountinfo:
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/":
            found = fields[0]
    return found


def enter_netns(name_or_path: str | os.PathLike[str]) -> None:
    """Move the *calling* thread into a namespace for good: used right before exec."""
    fd = open_netns(name_or_path)
    try:
        setns(fd)
    finally:
        os.close(fd)
