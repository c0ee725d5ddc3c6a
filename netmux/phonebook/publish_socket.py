"""The original socket protocol on /run/phonebook/publish, for scripts that are not netmux.

A client connects, sends one line `NAME IFNAME [ALIAS ...]\\n` (ASCII, at most 512 bytes)
and keeps the connection open: it is the lifeline (the original design's reference count — pass the
fd to children and the record lives until the last copy is closed). The namespace is the
client's own, taken from SO_PEERCRED's PID at connect time. The daemon answers
`ok FQDN ...\\n` or `error MESSAGE\\n` (then closes). Callers must be root or in the
configured group (the socket is also mode 0660, group netmux). From a start script, for
instance (the daemon exec'ed at the end inherits the connection):

    python3 -c 'import os, socket, sys
    s = socket.socket(socket.AF_UNIX); s.connect("/run/phonebook/publish")
    s.sendall(b"httpd eth0\\n"); print(s.recv(512).decode().strip(), file=sys.stderr)
    os.set_inheritable(s.fileno(), True); os.execvp(sys.argv[1], sys.argv[1:])' httpd -f

netmux's own `up` and `down` use it too (it costs no D-Bus library: docs/benchmarks.md,
"The launcher's own cost"), with leading `KEY=VALUE` options that no name can contain:
`netns=NETNS NAME IFNAME ...` publishes in /run/netns/NETNS, labelled like D-Bus Publish
with a netns (root only); `unpublish=NAME` alone removes NAME's records now, like D-Bus
Unpublish (root or its publisher), and is answered `ok yes` or `ok no`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from .. import journal
from ..errors import NetmuxError
from ..sd import unit_of
from .checks import check_netns_name, check_unit_name

if TYPE_CHECKING:
    from .daemon import Phonebook

MAX_LINE = 512
READ_TIMEOUT = 5.0
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
BACKOFF = (0.05, 1.0)  # seconds between accept attempts while out of descriptors


def peer_cred(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def allowed(pid: int, uid: int, gid: int, group: str) -> bool:
    """Root, or a member of `group` (primary or supplementary, as the kernel sees the peer)."""
    if uid == 0:
        return True
    try:
        want = grp.getgrnam(group).gr_gid
    except KeyError:
        return False
    if gid == want:
        return True
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return str(want) in line.split()[1:]
    except OSError:
        pass
    return False


def parse_request(data: bytes) -> tuple[str, str, list[str]]:
    """b'NAME IFNAME [ALIAS...]\\n' -> (name, ifname, aliases); ValueError if malformed.
    The fields are checked by Phonebook.publish (names, interface) before anything is kept."""
    if len(data) > MAX_LINE or not data.endswith(b"\n") or data.count(b"\n") != 1:
        raise ValueError(f"expected one line 'NAME IFNAME [ALIAS ...]' of at most {MAX_LINE} bytes")
    try:
        text = data[:-1].decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("expected ASCII") from None
    if any(not c.isprintable() for c in text):
        raise ValueError("expected printable characters")
    parts = text.split(" ")
    if len(parts) < 2 or "" in parts:
        raise ValueError("expected 'NAME IFNAME [ALIAS ...]' separated by single spaces")
    return parts[0], parts[1], parts[2:]


OPTIONS = ("netns", "unit", "unpublish")


def parse_options(data: bytes) -> tuple[dict[str, str], bytes]:
    """Leading `KEY=VALUE ` tokens of a request line -> ({KEY: VALUE}, the rest of the line).
    ValueError for an unknown or repeated key; the values are checked by the caller."""
    opts: dict[str, str] = {}
    while True:
        head, sep, rest = data.partition(b" ")
        if b"=" not in head:
            return opts, data
        key, _, value = head.rstrip(b"\n").decode("ascii", "replace").partition("=")
        if key not in OPTIONS or key in opts:
            raise ValueError(f"unknown or repeated option {key!r} (known: {', '.join(OPTIONS)})")
        opts[key] = value
        if not sep:  # the option was the whole line (`unpublish=NAME\n`)
            return opts, b""
        data = rest


class PublishSocketServer:
    def __init__(self, book: Phonebook, sock: socket.socket) -> None:
        self.book = book
        self.sock = sock
        self.task = asyncio.get_running_loop().create_task(self._accept())
        self.clients: set[asyncio.Task[None]] = set()
        self.pending: dict[int, int] = {}  # uid -> connections that have not published yet
        self.reading: set[asyncio.Task[None]] = set()  # those, as tasks (shed first)
        self.starved = False

    async def _accept(self) -> None:
        """Accept forever. Out of file descriptors, say so once, shed the connections that
        have not published (they hold an fd each and may be the cause), back off, and say
        so again when accepting works."""
        loop = asyncio.get_running_loop()
        delay = BACKOFF[0]
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as e:
                if e.errno not in OUT_OF_FDS:
                    raise
                if not self.starved:
                    self.starved = True
                    journal.error(
                        f"publish socket: out of file descriptors ({e.strerror}): dropping "
                        f"{len(self.reading)} connection(s) that have not published, "
                        "not accepting until descriptors are free"
                    )
                for t in list(self.reading):
                    t.cancel()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            if self.starved:
                self.starved = False
                journal.info("publish socket: accepting again")
            delay = BACKOFF[0]
            t = loop.create_task(self._client(conn))
            self.clients.add(t)
            t.add_done_callback(self.clients.discard)

    async def _client(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        nsfd = -1
        uid, counted = -1, False
        me = asyncio.current_task()
        try:
            pid, uid, gid = peer_cred(conn)
            # Bind the namespace now: the PID may be gone (or reused) by the time it speaks.
            nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            if not allowed(pid, uid, gid, self.book.cfg.phonebook.group):
                raise PermissionError(f"uid {uid} is not root or in group netmux")
            if me is not None:
                self.reading.add(me)
            pending = self.pending.get(uid, 0)
            self.pending[uid] = pending + 1
            counted = True
            if uid != 0:
                held = self.book.held(uid)[1] + pending
                limit = self.book.cfg.phonebook.user_connections
                if held >= limit:
                    raise PermissionError(
                        f"too many connections: uid {uid} holds {held} (at most {limit} per user)"
                    )
            unit = unit_of(pid) if self.book.cfg.phonebook.watch_units else ""
            data = b""
            async with asyncio.timeout(READ_TIMEOUT):
                while not data.endswith(b"\n") and len(data) <= MAX_LINE:
                    chunk = await loop.sock_recv(conn, MAX_LINE + 1 - len(data))
                    if not chunk:
                        break
                    data += chunk
            opts, data = parse_options(data)
            if "unpublish" in opts:
                await loop.sock_sendall(conn, self._unpublish(opts["unpublish"], uid, data))
                return
            label = f"pid:{pid}"
            if "netns" in opts:
                if uid != 0:  # a name under /run/netns is any namespace, mux's included
                    raise PermissionError("only root may name a namespace (netns=)")
                label = check_netns_name(opts["netns"])
                os.close(nsfd)
                nsfd = -1
                nsfd = os.open(f"/run/netns/{label}", os.O_RDONLY | os.O_CLOEXEC)
                unit = "" if unit == "phonebookd.service" else unit
            if "unit" in opts:
                # Root working for a unit it is not in (the warm launcher's worker,
                # netmux/launcher.py): that unit's stop removes the records.
                if uid != 0 or "netns" not in opts:
                    raise PermissionError("only root may name a unit (unit=), with netns=")
                unit = check_unit_name(opts["unit"])
            name, ifname, aliases = parse_request(data)
            self.reading.discard(me)  # type: ignore[arg-type]
            lifeline = os.dup(conn.fileno())
            fd, nsfd = nsfd, -1
            pub = self.book.publish(name, aliases, ifname, fd, label, lifeline, unit, uid,
                                    "socket")  # fmt: skip
            await self.book.watch_unit_of(pub)
            await self.book.settle(pub, self.book.cfg.workload.timeout)
            reply = "ok " + " ".join(self.book.published_names(pub)) + "\n"
            await loop.sock_sendall(conn, reply.encode())
        except (NetmuxError, ValueError, PermissionError, OSError, TimeoutError) as e:
            msg = str(e).replace("\n", " ") or type(e).__name__
            journal.warning(f"refused a publish request: {msg}")
            with contextlib.suppress(OSError):
                await loop.sock_sendall(conn, f"error {msg}\n".encode())
        finally:
            self.reading.discard(me)  # type: ignore[arg-type]
            if counted:
                self.pending[uid] -= 1
                if not self.pending[uid]:
                    del self.pending[uid]
            if nsfd >= 0:
                os.close(nsfd)
            conn.close()  # the daemon keeps its dup as the lifeline

    def _unpublish(self, name: str, uid: int, rest: bytes) -> bytes:
        if rest.strip():
            raise ValueError("unpublish=NAME stands alone on its line")
        pub = self.book.pubs.get(name)
        if pub is not None and uid not in (0, pub.uid):
            raise PermissionError(f"{name!r} was published by uid {pub.uid}; only it or root may")
        return b"ok yes\n" if self.book.unpublish(name) else b"ok no\n"

    def close(self) -> None:
        self.task.cancel()
        for t in self.clients:
            t.cancel()
        self.sock.close()


async def start(book: Phonebook, path: Path, fd: int | None = None) -> PublishSocketServer:
    """Listen on `path` (or adopt a listening socket passed by systemd as `fd`)."""
    if fd is not None:
        sock = socket.socket(fileno=fd)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(str(path))
        try:
            gid = grp.getgrnam(book.cfg.phonebook.group).gr_gid
            os.chown(path, 0, gid)
            os.chmod(path, 0o660)
        except (KeyError, PermissionError):
            os.chmod(path, 0o600)
        sock.listen(128)
    sock.setblocking(False)
    return PublishSocketServer(book, sock)
