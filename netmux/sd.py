"""systemd and nsfs primitives, without libsystemd: sd_notify, the fd store, sd_listen_fds,
the unit a process runs in, and the nsfs ioctls that tell what a namespace fd is.

sd_notify is a datagram to $NOTIFY_SOCKET (sd_notify(3)), so a raw socket does it with no
import cost; outside systemd (no NOTIFY_SOCKET) every call is a no-op. phonebookd hands its
lifelines to the fd store (FDSTORE=1 with a name) and gets them back after a restart
through LISTEN_FDS/LISTEN_FDNAMES.
"""

from __future__ import annotations

import _socket as socket  # not socket.py: its enum imports cost the launcher's client
import array
import fcntl
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping

SD_LISTEN_FDS_START = 3
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
FDNAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")

# <linux/nsfs.h>: _IO(0xb7, N)
NS_GET_USERNS = 0xB701
NS_GET_NSTYPE = 0xB703
NS_GET_OWNER_UID = 0xB704
CLONE_NEWNET = 0x40000000


# --- sd_notify and the fd store -------------------------------------------------------------


def _notify_address(env: MutableMapping[str, str] | dict[str, str]) -> str | bytes | None:
    path = env.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    if path.startswith("/"):
        return path
    return None


# The launcher's worker (netmux/launcher.py) relays its messages through its client, the
# unit's main process: systemd takes them from no other (NotifyAccess=main).
_relay: Callable[[str, list[int]], None] | None = None


def set_relay(relay: Callable[[str, list[int]], None] | None) -> None:
    global _relay
    _relay = relay


class Notifier:
    """One socket to $NOTIFY_SOCKET for a daemon that notifies often (phonebookd)."""

    def __init__(self, env: MutableMapping[str, str] | dict[str, str] | None = None) -> None:
        self.addr = _notify_address(os.environ if env is None else env)
        self.sock: socket.socket | None = None
        if self.addr is not None and _relay is None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None or (self.addr is not None and _relay is not None)

    def notify(self, text: str, fds: list[int] | None = None) -> None:
        if self.addr is not None and _relay is not None:
            _relay(text, list(fds or ()))
            return
        if self.sock is None or self.addr is None:
            return
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([text.encode()], anc, 0, self.addr)

    def store(self, name: str, fd: int) -> None:
        """Put `fd` into the unit's fd store under `name` (FileDescriptorStoreMax= > 0)."""
        self.notify(f"FDSTORE=1\nFDNAME={check_fdname(name)}", [fd])

    def remove(self, name: str) -> None:
        self.notify(f"FDSTOREREMOVE=1\nFDNAME={check_fdname(name)}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def check_fdname(name: str) -> str:
    if not 1 <= len(name) <= 255 or not FDNAME_CHARS.issuperset(name):
        raise ValueError(f"bad fd name {name!r}")
    return name


def notify(env: MutableMapping[str, str] | None = None, **fields: str) -> bool:
    """One sd_notify, e.g. notify(ready="1", status="..."); False outside systemd or when
    the message could not be sent (like sd_notify, never raises for that)."""
    n = Notifier(env)
    if not n.enabled:
        return False
    try:
        n.notify("\n".join(f"{k.upper()}={v}" for k, v in fields.items()))
    except OSError:
        return False
    finally:
        n.close()
    return True


# --- sd_listen_fds ------------------------------------------------------------------------


def listen_fds(
    env: MutableMapping[str, str] | None = None, unset: bool = True
) -> list[tuple[str, int]]:
    """The (name, fd) pairs systemd passed to this process (sd_listen_fds_with_names):
    [] unless LISTEN_PID is this process and LISTEN_FDS a count; names default to
    "unknown". The fds are made non-inheritable (a child must not keep them open) and,
    with `unset`, the variables are removed so a child does not take them for its own."""
    env = os.environ if env is None else env
    try:
        mine = int(env.get("LISTEN_PID", "0")) == os.getpid()
        n = int(env.get("LISTEN_FDS", "0")) if mine else 0
    except ValueError:
        n = 0
    raw = env.get("LISTEN_FDNAMES", "")
    names = raw.split(":") if n > 0 and raw else []
    if unset:
        for k in LISTEN_VARS:
            env.pop(k, None)
    return _adopt(n, names) if n > 0 else []


def _adopt(n: int, names: list[str]) -> list[tuple[str, int]]:
    names = names + ["unknown"] * (n - len(names))
    out = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        out.append((names[i], fd))
    return out


# --- which unit --------------------------------------------------------------------------


def unit_of(pid: int) -> str:
    """The systemd service a process runs in ('' if none), from its cgroup path."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return ""
    for line in text.splitlines():
        hier, _, path = line.partition(":")[2].partition(":")
        if hier in ("", "name=systemd"):
            for part in reversed(path.split("/")):
                if part.endswith(".service"):
                    return part
    return ""


# --- nsfs --------------------------------------------------------------------------------


def ns_type(fd: int) -> int:
    """The CLONE_NEW* type of namespace fd `fd`, 0 if it is not a namespace at all."""
    try:
        return int(fcntl.ioctl(fd, NS_GET_NSTYPE))
    except OSError:
        return 0


def is_netns(fd: int) -> bool:
    """Whether `fd` is a network namespace (nsfs), whatever path it was opened by."""
    return ns_type(fd) == CLONE_NEWNET


def userns_owner_uid(nsfd: int) -> int:
    """The uid owning the user namespace that owns namespace `nsfd` (OSError if none)."""
    userns = fcntl.ioctl(nsfd, NS_GET_USERNS)
    try:
        buf = array.array("I", [0])
        fcntl.ioctl(userns, NS_GET_OWNER_UID, buf, True)
        return int(buf[0])
    finally:
        os.close(userns)
