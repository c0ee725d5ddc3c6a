"""A small rtnetlink client: the few requests `netmux up`, `down` and `status` make.

pyroute2 0.9's IPRoute runs every request through an asyncio loop (~1-2 ms each, ~20 per
`up`) and importing it costs ~60 ms even without its package `__init__` (pr2.py). The
start path needs eight requests: look a link up by name, read one, create a macvlan or
macvtap in another namespace, set it up or set its alias, delete it, add an address, and
dump addresses and routes. They are here, on a plain netlink socket, ~0.1 ms each
(docs/benchmarks.md, "The launcher's own cost").

`Rtnl` is what links.iproute() returns. Anything else a caller asks of it (the IPRoute
API: `ipr.link("add", kind="bridge", ...)`, `get_links()`, `route("add", ...)`) is
handed to a real pyroute2 IPRoute on a duplicate of the same socket, made on first use:
those callers (mux up, ipmuxd, doctor) keep pyroute2's behaviour and pay for it alone.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x200, 0x400, 0x300
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_GETROUTE = 26
IFLA_ADDRESS, IFLA_IFNAME, IFLA_LINK, IFLA_OPERSTATE = 1, 3, 5, 16
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 18, 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_MACVLAN_MODE = 1  # IFLA_MACVTAP_MODE has the same number
MACVLAN_MODE_BRIDGE = 4
IFLA_IPVLAN_MODE = 1  # a u16
IPVLAN_MODE_L2 = 0
IFA_ADDRESS, IFA_FLAGS = 1, 8
RTA_OIF, RTA_MULTIPATH, RTA_TABLE = 4, 9, 15
IFF_UP = 0x1

_NLMSG = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_RTNH = struct.Struct("=HBBi")


class NetlinkError(OSError):
    """The kernel refused a request: `code` is the errno (args: code, message), as with
    pyroute2's NetlinkError, which the callers of the pyroute2 fallback still see."""

    @property
    def code(self) -> int:
        return int(self.errno or 0)


_FORWARDED: dict[type, type] = {}


def _forwarded(pyroute2_error: type) -> type:
    """A NetlinkError that is also pyroute2's NetlinkError (made once)."""
    if pyroute2_error not in _FORWARDED:

        def init(self: Any, code: int, msg: str) -> None:
            OSError.__init__(self, code, msg)

        _FORWARDED[pyroute2_error] = type(
            "NetlinkError", (NetlinkError, pyroute2_error), {"__init__": init}
        )
    return _FORWARDED[pyroute2_error]


def attr(kind: int, value: bytes) -> bytes:
    """One rtattr, padded to 4 bytes. Pure."""
    raw = _RTA.pack(_RTA.size + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The rtattrs in `data` from `offset` on: {type (nested flag masked): payload}. Pure."""
    out: dict[int, bytes] = {}
    while offset + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size:
            break
        out[kind & 0x3FFF] = data[offset + _RTA.size : offset + length]
        offset += (length + 3) & ~3
    return out


def _str(value: bytes | None) -> str | None:
    return None if value is None else value.split(b"\0", 1)[0].decode(errors="replace")


def _mac(value: bytes | None) -> str | None:
    return None if value is None else ":".join(f"{b:02x}" for b in value)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


@dataclass(frozen=True)
class Link:
    index: int
    flags: int
    ifname: str | None
    mac: str | None
    kind: str | None
    alias: str | None
    operstate: int | None


@dataclass(frozen=True)
class IfAddr:
    index: int
    prefixlen: int
    flags: int
    address: bytes


@dataclass(frozen=True)
class Route:
    dst_len: int
    table: int | None
    oifs: tuple[int, ...]  # RTA_OIF, or every next hop's


def parse_link(payload: bytes) -> Link:
    _, _, index, flags, _ = _IFINFO.unpack_from(payload)
    a = attrs(payload, _IFINFO.size)
    kind = None
    if IFLA_LINKINFO in a:
        kind = _str(attrs(a[IFLA_LINKINFO]).get(IFLA_INFO_KIND))
    operstate = a[IFLA_OPERSTATE][0] if a.get(IFLA_OPERSTATE) else None
    return Link(index, flags, _str(a.get(IFLA_IFNAME)), _mac(a.get(IFLA_ADDRESS)), kind,
                _str(a.get(IFLA_IFALIAS)), operstate)  # fmt: skip


def parse_addr(payload: bytes) -> IfAddr | None:
    _, prefixlen, flags, _, index = _IFADDR.unpack_from(payload)
    a = attrs(payload, _IFADDR.size)
    if IFA_ADDRESS not in a:
        return None
    if len(a.get(IFA_FLAGS, b"")) == 4:
        flags = struct.unpack("=I", a[IFA_FLAGS])[0]
    return IfAddr(index, prefixlen, flags, a[IFA_ADDRESS])


def parse_route(payload: bytes) -> Route:
    dst_len, table = payload[1], payload[4]
    a = attrs(payload, _RTMSG.size)
    oifs: list[int] = []
    if RTA_OIF in a:
        oifs.append(struct.unpack("=i", a[RTA_OIF][:4])[0])
    mp = a.get(RTA_MULTIPATH, b"")
    off = 0
    while off + _RTNH.size <= len(mp):
        length, _, _, ifindex = _RTNH.unpack_from(mp, off)
        if length < _RTNH.size:
            break
        oifs.append(ifindex)
        off += (length + 3) & ~3
    if RTA_TABLE in a:
        table = struct.unpack("=I", a[RTA_TABLE][:4])[0]
    return Route(dst_len, table, tuple(oifs))


class Rtnl:
    """A route netlink socket (in whichever namespace it was made) and its requests."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            self.sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE
            )
        else:
            self.sock = socket.socket(fileno=fd)
        self.seq = 0  # the kernel binds the socket (a port id of its own) on the first send
        self._pyroute2: Any = None

    # -- the protocol ------------------------------------------------------------------

    def request(self, mtype: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; the payloads of the replies of its type. NetlinkError."""
        self.seq += 1
        seq = self.seq
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        flags |= NLM_F_REQUEST | (0 if dump else NLM_F_ACK)
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), mtype, flags, seq, 0) + body)
        out: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, kind, _, mseq, _ = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    return out
                payload = data[off + _NLMSG.size : off + length]
                off += (length + 3) & ~3
                if mseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return out  # the ACK
                if kind == NLMSG_DONE:
                    return out
                out.append(payload)

    # -- links -------------------------------------------------------------------------

    def link_index(self, ifname: str) -> int | None:
        try:
            (p,) = self.request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0)
                                + attr(IFLA_IFNAME, ifname.encode() + b"\0"))  # fmt: skip
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.EINVAL):
                return None
            raise
        return parse_link(p).index

    def link_get(self, index: int) -> Link:
        (p,) = self.request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))
        return parse_link(p)

    def link_set(
        self, index: int, flags: int = 0, change: int = 0, ifalias: str | None = None
    ) -> None:
        body = _IFINFO.pack(0, 0, index, flags, change)
        if ifalias is not None:
            body += attr(IFLA_IFALIAS, ifalias.encode() + b"\0")
        self.request(RTM_NEWLINK, 0, body)

    def link_del(self, index: int) -> None:
        self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))

    def link_add_child(
        self,
        ifname: str,
        kind: str,
        parent: int,
        mac: str,
        flags: int = 0,
        change: int = 0,
        net_ns_fd: int | None = None,
    ) -> None:
        """A macvlan/macvtap in bridge mode (an ipvlan in L2 mode: it has its parent's MAC,
        so `mac` is not used) on `parent`, in `net_ns_fd` if given."""
        if kind == "ipvlan":
            data = attr(IFLA_IPVLAN_MODE, struct.pack("=H", IPVLAN_MODE_L2))
        else:
            data = attr(IFLA_MACVLAN_MODE, struct.pack("=I", MACVLAN_MODE_BRIDGE))
        info = attr(IFLA_INFO_KIND, kind.encode()) + attr(IFLA_INFO_DATA | 0x8000, data)
        body = (
            _IFINFO.pack(0, 0, 0, flags, change)
            + attr(IFLA_IFNAME, ifname.encode() + b"\0")
            + attr(IFLA_LINK, struct.pack("=I", parent))
            + (attr(IFLA_ADDRESS, mac_bytes(mac)) if kind != "ipvlan" else b"")
            + attr(IFLA_LINKINFO | 0x8000, info)
        )
        if net_ns_fd is not None:
            body += attr(IFLA_NET_NS_FD, struct.pack("=I", net_ns_fd))
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    # -- addresses and routes ----------------------------------------------------------

    def addr_add(self, index: int, address: bytes, prefixlen: int, flags: int = 0) -> None:
        family = socket.AF_INET6 if len(address) == 16 else socket.AF_INET
        body = _IFADDR.pack(family, prefixlen, flags & 0xFF, 0, index)
        body += attr(IFA_ADDRESS, address)
        if family == socket.AF_INET:
            body += attr(2, address)  # IFA_LOCAL
        if flags:
            body += attr(IFA_FLAGS, struct.pack("=I", flags))
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def addr_dump(self, family: int = socket.AF_INET6) -> list[IfAddr]:
        out = []
        for p in self.request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(family, 0, 0, 0, 0)):
            a = parse_addr(p)
            if a is not None:
                out.append(a)
        return out

    def route_dump(self, family: int = socket.AF_INET6) -> list[Route]:
        body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        return [parse_route(p) for p in self.request(RTM_GETROUTE, NLM_F_DUMP, body)]

    # -- everything else: pyroute2 -----------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._pyroute2 is None:
            from .pr2 import IPRoute

            self._pyroute2 = IPRoute(fileno=os.dup(self.sock.fileno()))
        value = getattr(self._pyroute2, name)
        if not callable(value):
            return value

        def call(*args: Any, **kw: Any) -> Any:
            """The kernel's refusal as one exception both kinds of caller catch: ours
            (`except NetlinkError`, e.g. links.py) and pyroute2's (`pr2.NetlinkError`)."""
            from . import pr2

            try:
                return value(*args, **kw)
            except pr2.NetlinkError as e:
                raise _forwarded(pr2.NetlinkError)(
                    e.code, str(e.args[1] if len(e.args) > 1 else e)
                ) from e

        return call

    def close(self) -> None:
        if self._pyroute2 is not None:
            self._pyroute2.close()
            self._pyroute2 = None
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
