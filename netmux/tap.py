"""The one way netmux opens a macvtap's character device (for QEMU's `-netdev tap,fd=`).

The device is found by its own major:minor, read from /sys/class/net/IF/macvtap/tapN/dev
as seen from the macvtap's namespace, never by a path guessed from the ifindex: every
fresh namespace gives its first link ifindex 2, so /dev/tap2 names different devices in
different namespaces and devtmpfs keeps whichever node came first. Opening the wrong one
would not just fail, it would add a queue to another VM's macvtap.

So: /dev/tapN is used only when its st_rdev is the device's (the usual devtmpfs case, which
keeps the node's ownership and ACLs); otherwise a node with the device's numbers is made
under a uniquely named directory in /dev, opened and removed at once. /dev because it is
the one mount a root service can rely on to allow device nodes: systemd mounts /run (and
nspawn /tmp) nodev, where a node can be made but not opened. The open fd is checked again
with fstat, so a node replaced in between is refused, not used.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import StateError

DEV_DIR = Path("/dev")
TAPFD = "{tapfd}"  # in a VM's command: the tap fd number (QEMU's -netdev tap,fd=)
MAC = "{mac}"  # in a VM's command: the MAC netmux gives the guest
# Inside the namespace, in a private mount namespace: a sysfs mounted there shows that
# namespace's links (a sysfs shows the links of the namespace that mounted it).
_SYSFS_SCRIPT = (
    'mount -t sysfs sysfs /sys && for d in /sys/class/net/"$1"/macvtap/tap*; do '
    '[ -e "$d/dev" ] && echo "${d##*/} $(cat "$d/dev")"; done'
)


@dataclass(frozen=True)
class TapDevice:
    """A macvtap's character device: its sysfs name (tapIFINDEX) and numbers."""

    name: str
    major: int
    minor: int

    @property
    def rdev(self) -> int:
        return os.makedev(self.major, self.minor)


def parse_sysfs(text: str) -> TapDevice | None:
    """`tap2 246:2` (the sysfs script's output) -> TapDevice; None if absent. Pure."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("tap") and ":" in parts[1]:
            major, _, minor = parts[1].partition(":")
            if major.isdigit() and minor.isdigit():
                return TapDevice(parts[0], int(major), int(minor))
    return None


def find_device(netns: str | int, ifname: str, what: str) -> TapDevice:
    """The macvtap `ifname`'s device numbers, from the sysfs of `netns` (a name or an fd)."""
    if isinstance(netns, int):
        ns, fds = f"/proc/self/fd/{netns}", [netns]
    else:
        ns, fds = f"/run/netns/{netns}", []
    r = subprocess.run(
        ["nsenter", f"--net={ns}", "unshare", "--mount", "--propagation", "private",
         "sh", "-c", _SYSFS_SCRIPT, "sh", ifname],
        pass_fds=fds, capture_output=True, text=True, check=False, timeout=10,
    )  # fmt: skip
    dev = parse_sysfs(r.stdout)
    if dev is None:
        err = r.stderr.strip().splitlines()
        why = f": {err[-1]}" if err else ""
        raise StateError(f"{what}: {ifname} has no macvtap character device in sysfs{why}")
    return dev


def substitute(cmd: Sequence[str], tap_fd: int | None, mac: str) -> list[str]:
    """{tapfd} and {mac} in a command's arguments (`netmux up --vm`, `netmux ipmux`). Pure."""
    out = []
    for a in cmd:
        if tap_fd is not None:
            a = a.replace(TAPFD, str(tap_fd))
        out.append(a.replace(MAC, mac))
    return out


def open_tap(netns: str | int, ifname: str, what: str, inheritable: bool = True) -> int:
    """Open macvtap `ifname` of `netns` by its own major:minor; StateError (one line) if not.

    `what` names the caller's object in the error (e.g. "workload vm1").
    """
    dev = find_device(netns, ifname, what)
    fd = _open_devtmpfs(dev)
    if fd is None:
        fd = _open_own_node(dev, what)
    try:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != dev.rdev:
            raise StateError(f"{what}: the tap node opened is not {dev.major}:{dev.minor}")
        os.set_inheritable(fd, inheritable)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_devtmpfs(dev: TapDevice, wait: float = 0.5) -> int | None:
    """/dev/tapN, only if it is this device (devtmpfs adds it asynchronously)."""
    node = DEV_DIR / dev.name
    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(OSError):
            st = node.stat()
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == dev.rdev:
                return os.open(node, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
            if stat.S_ISCHR(st.st_mode):
                return None  # another device's node (the ifindex collision): do not touch
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _open_own_node(dev: TapDevice, what: str) -> int:
    """mknod the device in a private directory under /dev, open it, remove it."""
    try:
        with tempfile.TemporaryDirectory(prefix=".netmux-tap.", dir=DEV_DIR) as d:
            node = Path(d) / dev.name
            os.mknod(node, 0o600 | stat.S_IFCHR, dev.rdev)
            return os.open(node, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise StateError(
            f"{what}: cannot open tap device {dev.major}:{dev.minor} ({dev.name}): /dev has no "
            f"matching node and a node made in {DEV_DIR} cannot be opened ({e.strerror}); "
            "run as root with CAP_MKNOD and a /dev that allows device nodes"
        ) from None
