"""ipmuxd: macvlan/macvtap (ipvlan where the kernel has it) on demand for unprivileged callers.

The original author's daemon, rebuilt: a caller in its own network namespace (typically
an unprivileged `unshare -rn`) connects to a unix socket whose file permissions (0660,
group `ipmux.group`) are the whole access policy, sends one request and its namespace as
an fd (SCM_RIGHTS). ipmuxd checks

- the peer (SO_PEERCRED) and that the namespace belongs to the peer: the user namespace
  owning it must be owned by the peer's uid (root may use any namespace);
- the name (names.check_name; not in use by the same user) and the kind;
- the per-user quota (devices held at once);

then creates the device on mux's parent (host0) directly in the caller's namespace, with
the MAC and stable secret derived from the uid and the name (`identity`), so the caller
gets the same addresses every time and no one else can get them. The device lives as
long as the connection: when it closes (exit, crash, SIGKILL of every holder) ipmuxd
deletes it. ipmuxd keeps the namespace fd until then, so
the namespace cannot vanish under it.

Protocol (SOCK_SEQPACKET, one JSON object per message):
  request  {"name": "web", "kind": "routed", "ifname": "eth0"} + SCM_RIGHTS [netns fd]
           (kind: routed, the default, macvlan, macvtap or ipvlan)
  reply    {"ok": true, "ifname": "eth0", "ifindex": 2, "mac": "..", "kind": "routed", ...}
           (+ SCM_RIGHTS [tap fd] for a macvtap: the caller could not mknod it)
           {"ok": false, "error": "one line saying what is wrong"}
Malformed requests get an error reply; the daemon keeps serving everyone else.

Started by systemd (ipmuxd.socket, LISTEN_FDS) or standalone (binds `ipmux.socket`).
The client side is `netmux ipmux NAME -- CMD` (cmd_ipmux below).

kind "routed", the default (create_routed): a veth of the caller's own to mux
(netmux/routed.py), up with its addresses (as SLAAC would make them) and default route,
its mux end named per uid and name (routed_peer); what the caller forges stops there
(a member is root in its user namespace: on a macvlan it reaches its siblings' links).
phonebookd vouches for the addresses mux routes to it; ipmuxd re-addresses it when the
gateway's prefixes change (follow_prefixes). "macvlan" is still there for callers that
need the segment itself (multicast with siblings, their own SLAAC).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import errno
import grp
import hashlib
import ipaddress
import json
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config, journal, links, names, nsutil, sd, tap
from .config import HostConfig
from .errors import NetmuxError, StateError, UsageError

KINDS = ("macvlan", "macvtap", "ipvlan", "routed")
# A member is root in its user namespace: on a macvlan it reaches its siblings' links
# (forged RAs, MACs, addresses); a routed device is its own (netmux/routed.py).
DEFAULT_KIND = "routed"
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
PAUSE = 0.5  # seconds the listener rests after running out of file descriptors
PREFIX_CHECK = 2.0  # seconds between looks at the gateway's prefixes (routed devices)
MAX_MSG = 4096
ENV_FD = "NETMUX_IPMUX_FD"
ENV_TAP_FD = "NETMUX_TAP_FD"  # macvtap: the tap fd for QEMU (-netdev tap,fd=$NETMUX_TAP_FD)


class RequestError(NetmuxError):
    """A request ipmuxd refuses; the message goes back to the caller."""


# --- namespace checks ------------------------------------------------------------------------


def netns_owner_uid(fd: int) -> int:
    """The uid owning the user namespace that owns network namespace `fd`."""
    if not sd.is_netns(fd):
        raise RequestError("the fd passed is not a network namespace")
    return sd.userns_owner_uid(fd)


# --- requests (pure checks) -------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    name: str
    kind: str
    ifname: str


def parse_request(data: bytes, default_ifname: str) -> Request:
    """Check one request message; RequestError saying what is wrong. Pure."""
    try:
        msg = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        raise RequestError("a request is one JSON object") from None
    if not isinstance(msg, dict):
        raise RequestError("a request is one JSON object")
    unknown = sorted(set(msg) - {"name", "kind", "ifname"})
    if unknown:
        raise RequestError(f"unknown key {unknown[0]!r}; known: name, kind, ifname")
    name = msg.get("name")
    if not isinstance(name, str):
        raise RequestError("'name' (a string) is required")
    try:
        names.check_name(name, "device name")
    except UsageError as e:
        raise RequestError(str(e)) from None
    kind = msg.get("kind", DEFAULT_KIND)
    if kind not in KINDS:
        raise RequestError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    ifname = msg.get("ifname", default_ifname)
    if not isinstance(ifname, str) or not config.IFNAME_RE.fullmatch(ifname) or ifname == "lo":
        raise RequestError(f"ifname {ifname!r} is not allowed: {config.IFNAME_ALLOWED}")
    return Request(name, kind, ifname)


def quota_ok(held: dict[int, int], uid: int, quota: int) -> bool:
    return uid == 0 or held.get(uid, 0) < quota


def connection_limit(quota: int) -> int:
    """Open connections one user may have (with or without a device)."""
    return 2 * quota + 4


# --- the daemon ------------------------------------------------------------------------------


@dataclass
class Conn:
    sock: socket.socket
    pid: int
    uid: int
    gid: int
    netns_fd: int | None = None
    device: dict[str, Any] = field(default_factory=dict)


class Daemon:
    def __init__(self, host: HostConfig, listener: socket.socket) -> None:
        self.host = host
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.stopping = False
        self._key: bytes | None = None
        self.paused_until = 0.0  # out of file descriptors: accept again after this
        self.prefixes: Any = None  # routed.Prefixes, once a routed device exists
        self.prefix_check = 0.0

    # -- bookkeeping
    def held(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for c in self.conns.values():
            if c.device:
                out[c.uid] = out.get(c.uid, 0) + 1
        return out

    def names_in_use(self, uid: int) -> set[str]:
        return {c.device["name"] for c in self.conns.values() if c.device and c.uid == uid}

    def key(self) -> bytes:
        if self._key is None:
            self._key = names.load_host_key(self.host.paths.host_key)
        return self._key

    # -- loop
    def serve(self) -> None:
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ)
        while not self.stopping:
            if self.paused_until and time.monotonic() >= self.paused_until:
                self.paused_until = 0.0
                self.sel.register(self.listener, selectors.EVENT_READ)
                journal.info("ipmuxd: accepting again")
            for skey, _ in self.sel.select(timeout=PAUSE if self.paused_until else 1.0):
                if skey.fileobj is self.listener:
                    self.accept()
                else:
                    self.readable(skey.fd)
            if time.monotonic() >= self.prefix_check:
                self.prefix_check = time.monotonic() + PREFIX_CHECK
                self.follow_prefixes()
        for fd in list(self.conns):
            self.close(fd)

    def follow_prefixes(self) -> None:
        """Routed devices get no RAs: when the gateway's prefixes change, give each its
        new addresses and deprecate the old ones (routed.readdress_link), as the mux
        watcher does for routed workloads."""
        from . import routed

        devices = [c for c in self.conns.values() if c.device.get("kind") == "routed"]
        if not devices:
            return
        if self.prefixes is None:
            self.prefixes = routed.Prefixes(self.host)
        try:
            now = self.prefixes.now()
        except Exception as e:  # mux is down or going: nothing to follow now
            journal.debug(f"ipmuxd: cannot read the gateway's prefixes: {e}")
            return
        if now == self.prefixes.last:
            return
        failed = False
        for c in devices:
            d = c.device
            if c.netns_fd is None:
                continue
            have = tuple(ipaddress.IPv6Address(a) for a in d["addresses"])
            secret = identity(self.key(), c.uid, d["name"])[1]
            try:
                keep = routed.readdress_link(self.host, c.netns_fd, d["peer"], d["ifname"],
                                             d["mac"], secret, have, *now)  # fmt: skip
            except Exception as e:  # one device's failure must not stop the others
                journal.warning(f"ipmuxd: cannot re-address {d['ifname']} of uid {c.uid}: {e}")
                failed = True  # tried again at the next check
                continue
            if keep is not None:
                d["addresses"] = [str(a) for a in keep]
                journal.info(f"ipmuxd: re-addressed {d['ifname']} of uid {c.uid}",
                             workload=d["name"])  # fmt: skip
        if not failed:
            self.prefixes.last = now

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno not in OUT_OF_FDS:
                raise
            # Out of descriptors: shed the connections that hold no device (they cost an fd
            # each and may be the cause), rest the listener, and say so.
            idle = [fd for fd, c in self.conns.items() if not c.device]
            journal.error(
                f"ipmuxd: out of file descriptors ({e.strerror}): closing {len(idle)} "
                f"connection(s) without a device, not accepting for {PAUSE}s"
            )
            for fd in idle:
                self.close(fd)
            self.sel.unregister(self.listener)
            self.paused_until = time.monotonic() + PAUSE
            return
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        limit = connection_limit(self.host.ipmux.quota)
        if uid != 0 and sum(1 for c in self.conns.values() if c.uid == uid) >= limit:
            # Idle connections cost an fd each: a member of the group cannot exhaust them.
            with contextlib.suppress(OSError):
                sock.send(json.dumps({"ok": False, "error": f"too many connections "
                                      f"(at most {limit} per user)"}).encode())  # fmt: skip
            sock.close()
            return
        sock.setblocking(False)
        self.conns[sock.fileno()] = Conn(sock, pid, uid, gid)
        self.sel.register(sock, selectors.EVENT_READ)

    def readable(self, fd: int) -> None:
        c = self.conns[fd]
        try:
            data, fds = recv_fds(c.sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if not data and not fds:
            self.close(fd)  # the caller is gone: remove its device
            return
        try:
            reply = self.handle(c, data, fds)
        except RequestError as e:
            reply = {"ok": False, "error": str(e)}
            journal.warning(f"ipmuxd: refused uid {c.uid} pid {c.pid}: {e}")
        except NetmuxError as e:
            reply = {"ok": False, "error": str(e)}
            journal.error(f"ipmuxd: failed for uid {c.uid} pid {c.pid}: {e}")
        except Exception as e:  # a bug or a kernel surprise: one caller fails, not the daemon
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
            journal.error(f"ipmuxd: internal error for uid {c.uid} pid {c.pid}: {e!r}")
        finally:
            for extra in fds:
                if extra != c.netns_fd:
                    os.close(extra)
        tap = reply.pop("_tap_fd", None)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [tap]))] if tap else []
        try:
            with contextlib.suppress(OSError):
                c.sock.sendmsg([json.dumps(reply).encode()], anc)
        finally:
            if tap is not None:
                os.close(tap)

    def handle(self, c: Conn, data: bytes, fds: list[int]) -> dict[str, Any]:
        if c.device:
            raise RequestError("one device per connection; open another connection")
        req = parse_request(data, self.host.workload.ifname)
        if len(fds) != 1:
            raise RequestError("send exactly one fd: your network namespace (/proc/self/ns/net)")
        try:
            owner = netns_owner_uid(fds[0])
        except OSError:
            raise RequestError("the fd passed is not a network namespace") from None
        if c.uid != 0 and owner != c.uid:
            raise RequestError(
                f"that network namespace belongs to uid {owner}, not to you (uid {c.uid})"
            )
        if c.uid != 0 and req.kind not in self.host.ipmux.kinds:
            raise RequestError(
                f"kind {req.kind!r} is not allowed here (ipmux.kinds: "
                f"{', '.join(self.host.ipmux.kinds)})"
            )
        if req.name in self.names_in_use(c.uid):
            raise RequestError(f"name {req.name!r} is in use (by you)")
        if req.name == self.host.mux.netns:
            raise RequestError(f"name {req.name!r} is the mux namespace's name")
        if not quota_ok(self.held(), c.uid, self.host.ipmux.quota):
            raise RequestError(
                f"quota: uid {c.uid} already holds {self.host.ipmux.quota} devices "
                "(ipmux.quota); close one first"
            )
        c.netns_fd = fds[0]
        try:
            c.device = create_device(self.host, self.key(), c.uid, req, fds[0])
        except BaseException:
            c.netns_fd = None
            raise
        journal.info(
            f"ipmuxd: {req.kind} {req.ifname} for uid {c.uid} pid {c.pid}",
            workload=req.name,
            ifname=req.ifname,
        )
        out: dict[str, Any] = {"ok": True, **c.device}
        if req.kind == "macvtap":
            out["_tap_fd"] = tap.open_tap(fds[0], req.ifname, f"ipmuxd: {req.name}", False)
        return out

    def close(self, fd: int) -> None:
        c = self.conns.pop(fd)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()
        if c.netns_fd is not None:
            try:
                if c.device:
                    delete_device(c.netns_fd, c.device, self.host)
                    journal.info(
                        f"ipmuxd: removed {c.device['ifname']} (uid {c.uid} disconnected)",
                        workload=c.device["name"],
                    )
            except Exception as e:  # never let one caller's cleanup stop the daemon
                journal.error(f"ipmuxd: cannot remove {c.device.get('ifname')}: {e}")
            finally:
                os.close(c.netns_fd)


def recv_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    data, anc, flags, _ = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    got = list(fds)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in got:
            os.close(fd)
        return b"\0", []  # answered as malformed
    return data, got


# --- kernel side ------------------------------------------------------------------------------


def identity(key: bytes, uid: int, name: str) -> tuple[str, str]:
    """(MAC, stable secret) of user `uid`'s device `name`. Pure.

    Derived from the host key, the uid and the name: stable across requests, but never
    the same as a workload's (names.stable_*) or another user's with the same name, so
    nobody can take over someone else's addresses by asking for their name.
    """
    names.check_name(name, "device name")
    d = names.derive(key, "ipmux", str(uid), name)
    return names.as_mac(d[16:22]), names.as_secret(d[:16])


def routed_peer(uid: int, name: str) -> str:
    """mux's end of user `uid`'s routed device `name` ("nm" + 12 hex digits, ≤ 15). Pure."""
    return "nm" + hashlib.sha256(f"netmux/ipmux\0{uid}\0{name}".encode()).hexdigest()[:12]


def create_routed(
    host: HostConfig, key: bytes, uid: int, req: Request, netns_fd: int
) -> dict[str, Any]:
    """A routed veth (netmux/routed.py) in the caller's namespace, up with its addresses
    and default route: mux's end filters what the caller sends, root in its user namespace
    or not."""
    from . import routed

    mac, secret = identity(key, uid, req.name)
    if not nsutil.netns_path(host.mux.netns).exists():
        raise StateError(f"the mux namespace {host.mux.netns!r} does not exist (mux is not up)")
    # A ULA-only mux (no delegation yet) is enough: a global prefix is added when it comes.
    addrs = routed.derived_addresses(host, secret, f"ipmuxd: {req.name}", need_global=False)
    peer = routed_peer(uid, req.name)
    device: dict[str, Any] = {
        "name": req.name,
        "kind": req.kind,
        "ifname": req.ifname,
        "mac": mac,
        "peer": peer,
        "addresses": [str(a) for a in addrs],
    }
    try:
        routed.attach(host, req.name, req.ifname, mac, secret, addrs, netns_fd, peer)
        routed.bring_up(netns_fd, req.ifname, addrs)
        with links.iproute(netns_fd) as ipr:
            device["ifindex"] = links.link_index(ipr, req.ifname)
    except BaseException:
        with contextlib.suppress(Exception):
            routed.detach(host, req.name, addrs, peer)
        raise
    return device


def create_device(
    host: HostConfig, key: bytes, uid: int, req: Request, netns_fd: int
) -> dict[str, Any]:
    """Create the device on mux's parent, registered directly in the caller's namespace,
    the way a workload's link is made (links.create_child_link, links.workload_sysctls)."""
    from pyroute2.netlink.exceptions import NetlinkError

    if req.kind == "routed":
        return create_routed(host, key, uid, req, netns_fd)
    mac, secret = identity(key, uid, req.name)
    if not nsutil.netns_path(host.mux.netns).exists():
        raise StateError(f"the mux namespace {host.mux.netns!r} does not exist (mux is not up)")
    with links.iproute(host.mux.netns) as ipr:
        try:
            links.create_child_link(
                ipr, host.mux.parent, req.ifname, mac, req.kind, target_netns=netns_fd
            )
        except StateError as e:
            cause = e.__cause__
            if isinstance(cause, NetlinkError):
                if cause.code == errno.EOPNOTSUPP or "nknown device type" in str(cause):
                    raise RequestError(f"{req.kind} is not supported by this kernel") from None
                if cause.code == errno.EEXIST:
                    raise RequestError(f"{req.ifname} already exists in your namespace") from None
            raise
    tipr = links.open_ipr(netns_fd)
    try:
        idx = tipr.link_lookup(ifname=req.ifname)[0]
        mac = tipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        if req.kind != "macvtap":
            w = host.workload
            nsutil.write_sysctls(
                netns_fd,
                links.workload_sysctls(req.ifname, secret, w.optimistic_dad, w.retrans_time_ms),
            )
    except BaseException:
        with contextlib.suppress(Exception):
            tipr.link("del", ifname=req.ifname)
        raise
    finally:
        tipr.close()
    return {"name": req.name, "kind": req.kind, "ifname": req.ifname, "ifindex": idx, "mac": mac}


def delete_device(netns_fd: int, device: dict[str, Any], host: HostConfig | None = None) -> bool:
    """Delete the device if it is still ours (same index and MAC) in that namespace; a
    routed one's side in mux (veth end, proxy entries, table) goes in any case."""
    if device.get("kind") == "routed" and host is not None:
        from . import routed

        try:
            return _delete_link(netns_fd, device)
        finally:
            addrs = tuple(ipaddress.IPv6Address(a) for a in device.get("addresses", ()))
            routed.detach(host, device["name"], addrs, device["peer"])
    return _delete_link(netns_fd, device)


def _delete_link(netns_fd: int, device: dict[str, Any]) -> bool:
    ipr = links.open_ipr(netns_fd)
    try:
        found = ipr.get_links(device["ifindex"])
    except Exception:
        found = []
    try:
        if found and found[0].get_attr("IFLA_ADDRESS") == device["mac"]:
            ipr.link("del", index=device["ifindex"])
            return True
        return False
    finally:
        ipr.close()


# --- sockets ---------------------------------------------------------------------------------


def resolve_group(spec: str) -> int:
    if spec.isdigit():
        return int(spec)
    try:
        return grp.getgrnam(spec).gr_gid
    except KeyError:
        raise StateError(
            f"ipmux.group {spec!r} does not exist: create it (groupadd --system {spec}) "
            "or give a numeric gid"
        ) from None


def bind_socket(host: HostConfig) -> socket.socket:
    """Bind `ipmux.socket` with mode 0660, owner root, group `ipmux.group`."""
    path = host.ipmux.socket
    gid = resolve_group(host.ipmux.group)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)  # never reachable by anyone before the chown/chmod below
    try:
        s.bind(str(path))
    finally:
        os.umask(old)
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)
    s.listen(64)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ipmuxd", description=__doc__.splitlines()[0])
    ap.add_argument("--config", metavar="PATH", help="host configuration")
    args = ap.parse_args(argv)
    try:
        host = config.load_host(config.config_path(args.config) if args.config else None)
        fds = [fd for _, fd in sd.listen_fds()]
        if fds:
            listener = socket.socket(fileno=fds[0])
            if listener.type != socket.SOCK_SEQPACKET:
                raise StateError("ipmuxd.socket must be a SOCK_SEQPACKET socket")
        else:
            listener = bind_socket(host)
    except NetmuxError as e:
        print(f"ipmuxd: {e}", file=sys.stderr)
        return e.exit_code
    daemon = Daemon(host, listener)

    def stop(signum: int, frame: object) -> None:
        daemon.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sd.notify(ready="1", status=f"serving {host.ipmux.socket}")
    journal.info(f"ipmuxd: serving {'(socket-activated)' if fds else host.ipmux.socket}")
    daemon.serve()
    if not fds:
        with contextlib.suppress(OSError):
            host.ipmux.socket.unlink()
    return 0


# --- the client: netmux ipmux NAME -- CMD ---------------------------------------------------


def request(
    sock_path: Path, name: str, kind: str, ifname: str
) -> tuple[socket.socket, dict[str, Any]]:
    """Ask ipmuxd for a device in this process's network namespace; keep the socket open."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(str(sock_path))
    except PermissionError:
        s.close()
        raise StateError(
            f"permission denied on {sock_path}: ipmuxd serves members of its group only"
        ) from None
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise StateError(f"ipmuxd is not running ({sock_path})") from None
    nsfd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        msg = json.dumps({"name": name, "kind": kind, "ifname": ifname}).encode()
        s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [nsfd]))])
    finally:
        os.close(nsfd)
    s.settimeout(30)
    data, fds = recv_fds(s)
    reply = json.loads(data.decode() or "{}")
    s.settimeout(None)
    if fds:
        reply["tap_fd"] = fds[0]  # a macvtap's character device, for QEMU's fd=
    if not reply.get("ok"):
        s.close()
        raise StateError(f"ipmuxd refused: {reply.get('error', 'no reply')}")
    return s, reply


def _link_up(ifname: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for dev in ("lo", ifname):
            idx = ipr.link_lookup(ifname=dev)
            if idx:
                ipr.link("set", index=idx[0], state="up")


def cmd_ipmux(args: argparse.Namespace, host: HostConfig) -> int:
    """Outer: re-exec inside `unshare --user --map-root-user --net`. Inner: the dance."""
    names.check_name(args.name, "device name")
    cmd = list(args.cmd or [])
    if not cmd:
        raise UsageError("ipmux: give the command to run after '--'")
    ifname = args.ifname or host.workload.ifname
    if not args.inner:
        argv = ["unshare", "--user", "--map-root-user", "--net", sys.executable, "-m",
                "netmux.cli"]  # fmt: skip
        if args.config:
            argv += ["--config", str(args.config)]
        argv += ["ipmux", "--inner", "--kind", args.kind, "--ifname", ifname, args.name, "--"]
        # The inner half must import this very netmux, however it was found (a launcher
        # may have put it on sys.path): hand the interpreter the same import path.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        os.execvpe(argv[0], argv + cmd, env)
    s, reply = request(host.ipmux.socket, args.name, args.kind, ifname)
    _link_up(ifname)
    fd = s.detach()
    os.set_inheritable(fd, True)
    os.environ[ENV_FD] = str(fd)
    os.environ["NETMUX_IFNAME"] = ifname
    os.environ["NETMUX_MAC"] = str(reply.get("mac", ""))
    if "tap_fd" in reply:
        os.set_inheritable(reply["tap_fd"], True)
        os.environ[ENV_TAP_FD] = str(reply["tap_fd"])
    journal.debug(f"ipmux: {reply}")
    cmd = tap.substitute(cmd, reply.get("tap_fd"), str(reply.get("mac", "")))
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        raise UsageError(f"ipmux: cannot run {cmd[0]!r}: {e.strerror}") from None
    return 127  # not reached


__all__ = ["Daemon", "Request", "main", "parse_request", "request"]


if __name__ == "__main__":
    sys.exit(main())
