"""Follow interface addresses inside other network namespaces over netlink, in asyncio.

One rtnetlink socket per namespace, opened by a thread that entered the namespace (so the
socket belongs to it), subscribed to link and address events, dumped once, then read by the
event loop. pyroute2's marshal parses the messages; the socket is ours so that every
namespace costs one file descriptor and no thread. A namespace is identified by its inode,
so /run/netns/NAME and /proc/PID/ns/net of the same namespace share one socket.

A VM's interface is a macvtap whose host side has no addresses: the guest's live inside
the guest. For it the watcher learns them from the guest's own neighbour discovery, which
the macvtap carries with the guest's MAC (netmux's, from the name): the duplicate address
detection every SLAAC address starts with (the target of an NS from ::), and the guest's
later NS/NA. A packet socket on the macvtap with a BPF filter passes only those frames, so a
busy guest costs phonebookd nothing. Learned addresses stay until the publication ends (the
VM stops): a guest does not announce that an address is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv6Address, ip_address

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from .. import journal, nsutil
from .records import Address

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
RCVBUF = 4 << 20

ETH_P_IPV6 = 0x86DD
ETH_P_ALL = 0x0003
ETH_P_ALL_N = socket.htons(ETH_P_ALL)
SO_ATTACH_FILTER = 26
ND_NS, ND_NA = 135, 136
# Classic BPF: IPv6, next header ICMPv6 (no extension headers: NDP has none), type NS or NA.
NDP_FILTER = (
    (0x28, 0, 0, 12),  # ldh [12]          ethertype
    (0x15, 0, 6, ETH_P_IPV6),  # jeq IPv6 else drop
    (0x30, 0, 0, 20),  # ldb [20]          next header
    (0x15, 0, 4, 58),  # jeq ICMPv6 else drop
    (0x30, 0, 0, 54),  # ldb [54]          ICMPv6 type
    (0x15, 1, 0, ND_NS),  # NS: accept
    (0x15, 0, 1, ND_NA),  # NA: accept, else drop
    (0x06, 0, 0, 0xFFFF),  # accept
    (0x06, 0, 0, 0),  # drop
)

NsKey = tuple[int, int]
Callback = Callable[[tuple[Address, ...]], None]


def ns_key(fd: int) -> NsKey:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def guest_ndp_addresses(frame: bytes, mac: bytes) -> set[IPv6Address]:
    """The guest addresses an NDP frame sent by `mac` shows (DAD target, NS/NA source, NA
    target); link-local, multicast and :: are left out. Pure."""
    if len(frame) < 78 or frame[6:12] != mac or frame[12:14] != b"\x86\xdd" or frame[20] != 58:
        return set()
    kind = frame[54]
    src = IPv6Address(frame[22:38])
    target = IPv6Address(frame[62:78])
    found: set[IPv6Address] = set()
    if kind == ND_NS:
        found.add(target if src.is_unspecified else src)
    elif kind == ND_NA:
        found |= {src, target}
    return {a for a in found if not (a.is_link_local or a.is_multicast or a.is_unspecified)}


def _ndp_socket(ifname: str) -> socket.socket:
    """A packet socket on `ifname` (in the calling thread's namespace) passing only NDP.

    ETH_P_ALL: a protocol-specific packet socket sees only received frames, and what the
    guest sends is, on the host side of its macvtap, transmitted.
    """
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, ETH_P_ALL_N)
    try:
        prog = b"".join(struct.pack("HBBI", *ins) for ins in NDP_FILTER)
        buf = ctypes.create_string_buffer(prog)
        fprog = struct.pack("HL", len(NDP_FILTER), ctypes.addressof(buf))
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        s.bind((ifname, ETH_P_ALL))
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class GuestSniffer:
    """The guest addresses behind one macvtap, learned from the guest's NDP frames."""

    def __init__(self, nsfd: int, ifname: str, mac: str, changed: Callable[[], None]) -> None:
        self.ifname = ifname
        self.mac = bytes.fromhex(mac.replace(":", ""))
        self.changed = changed
        self.found: dict[IPv6Address, Address] = {}
        self.sock = nsutil.run_in_netns(nsfd, lambda: _ndp_socket(ifname))
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        new = False
        while True:
            try:
                frame, where = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                journal.warning(f"phonebook: guest on {self.ifname}: {e}")
                break
            if where[0] != self.ifname:
                continue  # queued before bind() narrowed the socket to the macvtap
            for ip in guest_ndp_addresses(frame, self.mac):
                if ip not in self.found:
                    self.found[ip] = Address(ip, 64, 0)  # the guest's prefix length is its own
                    new = True
        if new:
            self.changed()

    def addresses(self) -> tuple[Address, ...]:
        return tuple(self.found[k] for k in sorted(self.found))

    def preload(self, ips: list[IPv6Address]) -> None:
        """Addresses learned before a restart of phonebookd (kept in its fd store): an idle
        guest may not do NDP with them again for a long time."""
        new = [ip for ip in ips if ip not in self.found]
        for ip in new:
            self.found[ip] = Address(ip, 64, 0)
        if new:
            self.changed()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


class NetnsWatcher:
    """Links and addresses of one namespace, kept current from netlink events."""

    def __init__(self, nsfd: int) -> None:
        self.key = ns_key(nsfd)
        self.nsfd = nsfd
        self.sock = nsutil.run_in_netns(nsfd, self._open)
        self.marshal = MarshalRtnl()
        self.links: dict[int, str] = {}
        self.macvtaps: dict[str, str] = {}  # ifname -> MAC, the VM links
        self.guests: dict[str, GuestSniffer] = {}
        # ifindex -> a number new for every link that appears: an index the kernel reuses
        # for another device (`ip link add ... index N`) is not the device that was checked.
        self.born: dict[int, int] = {}
        self.births = 0
        self.addrs: dict[int, dict[tuple[str, int], Address]] = {}
        self.subscribers: dict[str, dict[int, Callback]] = {}
        self.last: dict[str, tuple[Address, ...]] = {}
        self.seq = 0
        self._dump()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    @staticmethod
    def _open() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        return s

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        for g in self.guests.values():
            g.close()
        self.guests.clear()

    # -- netlink ----------------------------------------------------------------------

    def _request(self, msg: ifinfmsg | ifaddrmsg, mtype: int) -> None:
        self.seq += 1
        msg["header"]["type"] = mtype
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
        msg["header"]["sequence_number"] = self.seq
        msg["family"] = socket.AF_UNSPEC
        msg.encode()
        self.sock.send(msg.data)
        # Read until this dump is done; events that interleave are applied as they come.
        self.sock.setblocking(True)
        try:
            done = False
            while not done:
                for m in self.marshal.parse(self.sock.recv(1 << 20)):
                    mt = m["header"]["type"]
                    if (
                        mt in (NLMSG_DONE, NLMSG_ERROR)
                        and m["header"]["sequence_number"] == self.seq
                    ):
                        done = True
                    else:
                        self._apply(m)
        finally:
            self.sock.setblocking(False)

    def _dump(self) -> None:
        self.links.clear()
        self.born.clear()
        self.addrs.clear()
        self._request(ifinfmsg(), RTM_GETLINK)
        self._request(ifaddrmsg(), RTM_GETADDR)

    def _apply(self, m: ifinfmsg | ifaddrmsg) -> None:
        mt = m["header"]["type"]
        if mt == RTM_NEWLINK:
            name = m.get_attr("IFLA_IFNAME")
            if name:
                if m["index"] not in self.links:
                    self.births += 1
                    self.born[m["index"]] = self.births
                self.links[m["index"]] = name
                info = m.get_attr("IFLA_LINKINFO")
                kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
                mac = m.get_attr("IFLA_ADDRESS")
                if kind == "macvtap" and mac:
                    self.macvtaps[name] = mac
        elif mt == RTM_DELLINK:
            self.links.pop(m["index"], None)
            self.born.pop(m["index"], None)
            self.addrs.pop(m["index"], None)
        elif mt in (RTM_NEWADDR, RTM_DELADDR):
            text = m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS")
            if not text:
                return
            ip = ip_address(text.split("%")[0])
            flags = m.get_attr("IFA_FLAGS")
            flags = m["flags"] if flags is None else flags
            k = (str(ip), m["prefixlen"])
            per = self.addrs.setdefault(m["index"], {})
            if mt == RTM_NEWADDR:
                per[k] = Address(ip, m["prefixlen"], flags)
            else:
                per.pop(k, None)

    def _readable(self) -> None:
        try:
            while True:
                try:
                    data = self.sock.recv(1 << 20)
                except BlockingIOError:
                    break
                for m in self.marshal.parse(data):
                    self._apply(m)
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            journal.warning("phonebook: netlink overrun, re-reading addresses")
            self._dump()
        self._notify()

    # -- subscribers ------------------------------------------------------------------

    def addresses(self, ifname: str) -> tuple[Address, ...]:
        if ifname in self.guests:
            return self.guests[ifname].addresses()
        for index, name in self.links.items():
            if name == ifname:
                per = self.addrs.get(index, {})
                return tuple(per[k] for k in sorted(per))
        return ()

    def identity(self, ifindex: int, ifname: str) -> int:
        """The birth number of link `ifindex` if it still has `ifname` (0 if not)."""
        return self.born.get(ifindex, 0) if self.links.get(ifindex) == ifname else 0

    def subscribe(self, ifname: str, token: int, cb: Callback) -> tuple[Address, ...]:
        if ifname in self.macvtaps and ifname not in self.guests:
            mac = self.macvtaps[ifname]
            try:
                self.guests[ifname] = GuestSniffer(self.nsfd, ifname, mac, self._notify)
            except OSError as e:  # published all the same, with no address until fixed
                journal.warning(f"phonebook: cannot learn the guest's addresses on {ifname}: {e}")
        self.subscribers.setdefault(ifname, {})[token] = cb
        self.last[ifname] = self.addresses(ifname)
        return self.last[ifname]

    def unsubscribe(self, ifname: str, token: int) -> bool:
        """Remove one subscriber; True when nobody is left (the caller may close us)."""
        subs = self.subscribers.get(ifname, {})
        subs.pop(token, None)
        if not subs:
            self.subscribers.pop(ifname, None)
            self.last.pop(ifname, None)
            g = self.guests.pop(ifname, None)
            if g is not None:
                g.close()
        return not self.subscribers

    def _notify(self) -> None:
        for ifname, subs in list(self.subscribers.items()):
            now = self.addresses(ifname)
            if now != self.last.get(ifname):
                self.last[ifname] = now
                for cb in list(subs.values()):
                    cb(now)


class Follower:
    """Shares one NetnsWatcher per namespace among the publications inside it."""

    def __init__(self) -> None:
        self.watchers: dict[NsKey, NetnsWatcher] = {}
        self.tokens = 0

    def follow(self, nsfd: int, ifname: str, cb: Callback) -> tuple[int, tuple[Address, ...]]:
        """Start following; returns (token, the current addresses)."""
        key = ns_key(nsfd)
        w = self.watchers.get(key)
        if w is None:
            w = self.watchers[key] = NetnsWatcher(nsfd)
        self.tokens += 1
        return self.tokens, w.subscribe(ifname, self.tokens, cb)

    def unfollow(self, key: NsKey, ifname: str, token: int) -> None:
        w = self.watchers.get(key)
        if w and w.unsubscribe(ifname, token):
            w.close()
            del self.watchers[key]

    def guest(self, key: NsKey, ifname: str) -> GuestSniffer | None:
        """The sniffer learning a VM guest's addresses on `ifname`, if it is a macvtap."""
        w = self.watchers.get(key)
        return w.guests.get(ifname) if w else None

    def close(self) -> None:
        for w in self.watchers.values():
            w.close()
        self.watchers.clear()
