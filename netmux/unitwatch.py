"""The cue to build a workload ahead: systemd making a netmux@ unit's cgroup.

systemd creates a unit's cgroup (a directory) right before it forks the unit's process,
which then sets up the unit's sandbox — a mount namespace and a mount per protected path,
~60 ms of every start here (docs/benchmarks.md, "Start to AAAA under systemd") — and only
then execs `netmux up`. The warm launcher watches the directory these cgroups appear in
(inotify) and builds the workload meanwhile (netmux/launcher.py; netmux/workload.py,
`prebuild`), so the unit's `netmux up` finds it built. The cgroup's removal (the unit is
inactive again) drops a build nobody claimed. Only a cue: a missed event costs that start
its head start, nothing else, and what is built ahead is used only if the unit's own
`netmux up` asks for the very same build.
"""

from __future__ import annotations

import os
import struct

from . import syscalls

IN_CREATE = 0x100
IN_DELETE = 0x200
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
SLICE = "system-netmux.slice"  # where systemd puts netmux@NAME.service's cgroup
PREFIX, SUFFIX = "netmux@", ".service"
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


def units_dir(cgroup: str, mountinfo: str) -> str | None:
    """Where netmux@ units' cgroups appear, for a process (the launcher, a service of
    system.slice) whose /proc/self/cgroup is `cgroup` and /proc/self/mountinfo `mountinfo`:
    systemd's hierarchy (the name=systemd one on cgroup v1 and hybrid set-ups, else
    cgroup2), the process's slice, then SLICE. None when there is none to watch."""
    paths: dict[str, str] = {}
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    mounts: dict[str, str] = {}
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        f, g = pre.split(), post.split()
        if not sep or len(f) < 5 or len(g) < 3 or f[3] != "/":
            continue
        if g[0] == "cgroup2":
            mounts.setdefault("", f[4])
        elif g[0] == "cgroup" and "name=systemd" in g[2].split(","):
            mounts.setdefault("name=systemd", f[4])
    for hier in ("name=systemd", ""):
        own = paths.get(hier)
        if own is None or hier not in mounts or not own.startswith("/"):
            continue
        slice_ = own.rsplit("/", 1)[0] if own.endswith(SUFFIX) else own
        return mounts[hier].rstrip("/") + slice_.rstrip("/") + "/" + SLICE
    return None


def instance_of(dirname: str) -> str | None:
    """NAME of a cgroup directory `netmux@NAME.service`; None for anything else (and for
    an escaped instance: no workload name needs escaping)."""
    if not (dirname.startswith(PREFIX) and dirname.endswith(SUFFIX)):
        return None
    name = dirname[len(PREFIX) : -len(SUFFIX)]
    return name if name and "\\" not in name else None


def parse_events(data: bytes) -> list[tuple[int, int, str]]:
    """(wd, mask, name) of each inotify event in `data` (a read of the inotify fd)."""
    out = []
    off = 0
    while off + _EVENT.size <= len(data):
        wd, mask, _, n = _EVENT.unpack_from(data, off)
        raw = data[off + _EVENT.size : off + _EVENT.size + n]
        out.append((wd, mask, raw.split(b"\0", 1)[0].decode(errors="replace")))
        off += _EVENT.size + n
    return out


class UnitWatch:
    """inotify on the units' directory, and on its parent for the slice's own creation
    (systemd makes system-netmux.slice with the first netmux@ unit, and may remove it)."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.fd = syscalls.inotify_init()
        try:
            self.parent_wd = syscalls.inotify_add_watch(
                self.fd, os.path.dirname(directory), IN_CREATE | IN_ONLYDIR
            )
        except OSError:
            os.close(self.fd)
            raise
        self.wd: int | None = None
        self._arm()

    def _arm(self) -> None:
        try:
            self.wd = syscalls.inotify_add_watch(
                self.fd, self.dir, IN_CREATE | IN_DELETE | IN_ONLYDIR
            )
        except OSError:
            self.wd = None  # not there (yet): the parent's watch re-arms it

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[tuple[bool, str]]:
        """(True if created else removed, NAME) for each netmux@NAME cgroup event since
        the last read."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out = []
        for wd, mask, name in parse_events(data):
            if wd == self.parent_wd and mask & IN_CREATE and name == os.path.basename(self.dir):
                self._arm()
            elif wd == self.wd and mask & IN_IGNORED:
                self.wd = None  # the slice went away
            elif wd == self.wd and mask & (IN_CREATE | IN_DELETE):
                inst = instance_of(name)
                if inst is not None:
                    out.append((bool(mask & IN_CREATE), inst))
        return out

    def close(self) -> None:
        os.close(self.fd)
