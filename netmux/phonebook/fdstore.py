"""sd_notify and systemd's file-descriptor store, without libsystemd.

phonebookd hands every lifeline (and the namespace and a small state memfd of each
publication) to systemd with FDSTORE=1 and a name; after a restart systemd passes them
back (LISTEN_FDS, LISTEN_FDNAMES), so no record is lost. Outside systemd (no
NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import array
import os
import re
import socket

SD_LISTEN_FDS_START = 3
FDNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.addr: str | bytes | None = None
        if path.startswith("@"):
            self.addr = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.addr = path
        self.sock: socket.socket | None = None
        if self.addr is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, text: str, fds: list[int] | None = None) -> None:
        if self.sock is None or self.addr is None:
            return
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([text.encode()], anc, 0, self.addr)

    def store(self, name: str, fd: int) -> None:
        if not FDNAME_RE.fullmatch(name):
            raise ValueError(f"bad fd name {name!r}")
        self.notify(f"FDSTORE=1\nFDNAME={name}", [fd])

    def remove(self, name: str) -> None:
        if not FDNAME_RE.fullmatch(name):
            raise ValueError(f"bad fd name {name!r}")
        self.notify(f"FDSTOREREMOVE=1\nFDNAME={name}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def listen_fds(env: dict[str, str] | None = None, unset: bool = True) -> list[tuple[str, int]]:
    """The (name, fd) pairs systemd passed to this process (sd_listen_fds_with_names)."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    assert env is not None
    try:
        if int(env.get("LISTEN_PID", "0")) != os.getpid():
            return []
        n = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    names = env.get("LISTEN_FDNAMES", "").split(":") if n else []
    names += ["unknown"] * (n - len(names))
    out = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        out.append((names[i], fd))
    if unset:
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(k, None)
    return out
