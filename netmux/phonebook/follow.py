"""Follow interface addresses inside other network namespaces over netlink, in asyncio.

One rtnetlink socket per namespace, opened by a thread that entered the namespace (so the
socket belongs to it), subscribed to link and address events, dumped once, then read by the
event loop. pyroute2's marshal parses the messages; the socket is ours so that every
namespace costs one file descriptor and no thread. A namespace is identified by its inode,
so /run/netns/NAME and /proc/PID/ns/net of the same namespace share one socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Callable
from ipaddress import ip_address

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

NsKey = tuple[int, int]
Callback = Callable[[tuple[Address, ...]], None]


def ns_key(fd: int) -> NsKey:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


class NetnsWatcher:
    """Links and addresses of one namespace, kept current from netlink events."""

    def __init__(self, nsfd: int) -> None:
        self.key = ns_key(nsfd)
        self.sock = nsutil.run_in_netns(nsfd, self._open)
        self.marshal = MarshalRtnl()
        self.links: dict[int, str] = {}
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
        self.addrs.clear()
        self._request(ifinfmsg(), RTM_GETLINK)
        self._request(ifaddrmsg(), RTM_GETADDR)

    def _apply(self, m: ifinfmsg | ifaddrmsg) -> None:
        mt = m["header"]["type"]
        if mt == RTM_NEWLINK:
            name = m.get_attr("IFLA_IFNAME")
            if name:
                self.links[m["index"]] = name
        elif mt == RTM_DELLINK:
            self.links.pop(m["index"], None)
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
        for index, name in self.links.items():
            if name == ifname:
                per = self.addrs.get(index, {})
                return tuple(per[k] for k in sorted(per))
        return ()

    def subscribe(self, ifname: str, token: int, cb: Callback) -> tuple[Address, ...]:
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

    def close(self) -> None:
        for w in self.watchers.values():
            w.close()
        self.watchers.clear()
