"""The libc calls Python's os module lacks (setns, unshare, mount, umount2, prctl,
inotify), once.

Import-light on purpose (ctypes and os only): the launcher's client (netmux/launch.py)
enters a workload's namespaces with these before anything else of netmux is loaded;
netmux/nsutil.py builds the rest on them. dlopen(NULL) gives the interpreter's own libc,
with no ldconfig run (ctypes.util.find_library spawns one, ~10 ms a start).
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
MNT_DETACH = 2
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_LOWER = 3
_CAP_V3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(f, ctypes.c_uint32) for f in ("effective", "permitted", "inheritable")]


_libc = ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace behind `fd`."""
    if _libc.setns(fd, nstype) != 0:
        raise _fail("setns")


def unshare(flags: int, what: str) -> None:
    if _libc.unshare(flags) != 0:
        raise _fail(what)


def mount(source: str | None, target: str, fstype: str | None, flags: int, what: str) -> int:
    """mount(2); 0, or the errno when it failed (the caller decides what that means)."""
    enc = [s.encode() if s is not None else None for s in (source, target, fstype)]
    if _libc.mount(enc[0], enc[1], enc[2], flags, None) != 0:
        return ctypes.get_errno()
    return 0


def inotify_init() -> int:
    """A non-blocking, close-on-exec inotify fd."""
    fd = int(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        raise _fail("inotify_init1")
    return fd


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    """The watch descriptor of `path` on inotify `fd`."""
    wd = int(_libc.inotify_add_watch(fd, path.encode(), ctypes.c_uint32(mask)))
    if wd < 0:
        raise _fail(f"inotify_add_watch {path}")
    return wd


def umount2(target: str, flags: int) -> int:
    """umount2(2); 0, or the errno."""
    if _libc.umount2(target.encode(), flags) != 0:
        return ctypes.get_errno()
    return 0


def drop_capability(cap: int) -> None:
    """Take capability `cap` from this process for good, so that no later exec, setuid or
    file-capability program has it: out of the bounding set (needs CAP_SETPCAP, so first)
    and the ambient set, and out of the effective, permitted and inheritable sets: root's
    exec keeps whatever is inheritable, whatever the bounding set says (a systemd-nspawn
    payload here starts with every capability inheritable)."""
    in_bounding = _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 0
    if in_bounding and _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
        raise _fail(f"drop capability {cap} from the bounding set")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, cap, 0, 0)  # EINVAL: no ambient set
    hdr, data = _CapHeader(_CAP_V3, 0), (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        raise _fail("capget")
    word, bit = data[cap // 32], 1 << (cap % 32)
    word.effective &= ~bit
    word.permitted &= ~bit
    word.inheritable &= ~bit
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        raise _fail(f"drop capability {cap}")


def enter_netns_path(path: str) -> None:
    """Move the *calling* thread into the namespace at `path` for good (before exec)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
    finally:
        os.close(fd)


def private_bind(source: str, target: str) -> None:
    """Bind SOURCE over TARGET in a new mount namespace of this process (single-threaded,
    right before exec): mounts of the host still propagate in, this one never out."""
    unshare(CLONE_NEWNS, "unshare(CLONE_NEWNS)")
    for err, what in (
        (mount(None, "/", None, MS_REC | MS_SLAVE, ""), "make / a slave mount"),
        (mount(source, target, None, MS_BIND, ""), f"bind {source} over {target}"),
    ):
        if err:
            raise OSError(err, f"{what}: {os.strerror(err)}")
