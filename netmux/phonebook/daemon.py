"""phonebookd: every running workload in DNS, gone when it stops.

One asyncio process. A publication is a name (plus aliases), an interface and the network
namespace it lives in, kept alive by one or more *lifelines*: file descriptors whose other
end the workload holds (a pipe or socket it inherited, or the publish socket's connection).
When every lifeline has been closed (the workload exited, was killed, or its unit stopped),
the publication and its records go. Addresses are followed over netlink inside the
namespace; records are computed by records.py and handed to every sink.

Restart safety: each publication's state (a small memfd), namespace fd and lifelines are
put in systemd's fd store; on start they come back through LISTEN_FDS and are adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network

from .. import journal, names, nsutil, sd
from ..config import HostConfig
from ..errors import NetmuxError, StateError
from . import verify
from .checks import check_ifname, check_lifeline, check_netns_fd
from .errors import Denied, NameTaken, NotFollowed, NotServed
from .follow import Follower, NsKey, ns_key
from .records import (
    Address,
    Record,
    Zones,
    check_alias,
    first_ptr_wins,
    in_dad,
    publication_records,
    zone_records,
)
from .sinks import Rfc2136Sink, Sink
from .units import NoUnits, UnitWatcher


@dataclass(eq=False)
class Publication:
    id: int
    name: str
    aliases: tuple[str, ...]
    ifname: str
    netns: str  # for people: a /run/netns name or "pid:N"
    nsfd: int
    nskey: NsKey
    unit: str = ""
    uid: int = 0
    via: str = "dbus"
    lifelines: dict[int, str] = field(default_factory=dict)  # fd -> fd store name
    addresses: tuple[Address, ...] = ()
    token: int = 0
    state_fd: int = -1
    next_lifeline: int = 0
    records: list[Record] | None = None  # computed from addresses when first needed
    seen: tuple[Address, ...] = ()  # what the interface has; `addresses`: what is trusted
    link: tuple[int, int] = (0, 0)  # unprivileged: (ifindex, birth) of the checked device
    routed: frozenset[ipaddress.IPv6Address] | None = None  # a routed veth: what mux routes to it

    @property
    def labels(self) -> set[str]:
        return {self.name, *self.aliases}

    def state(self) -> dict[str, object]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "ifname": self.ifname,
            "netns": self.netns,
            "unit": self.unit,
            "uid": self.uid,
            "via": self.via,
        }

    def log(self, text: str, message_id: str) -> None:
        """A journal entry about this publication, with its workload and netns fields."""
        journal.info(text, message_id, workload=self.name, netns=self.netns)


class Phonebook:
    """The records and their owners. Side effects: netlink (follow), sinks, the fd store."""

    def __init__(
        self,
        cfg: HostConfig,
        sinks: Sequence[Sink],
        notifier: sd.Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.zones = Zones.from_config(cfg)
        self.sinks = list(sinks)
        self.notifier = notifier or sd.Notifier({})
        self.pubs: dict[str, Publication] = {}
        self.follower = Follower()
        self.next_id = 1
        self.listeners: list[Callable[[], None]] = []
        # What drops a unit's records when systemd says it stopped (units.py); the
        # composition (service.py) sets the D-Bus one when there is a bus.
        self.units: UnitWatcher = NoUnits()
        self._emit_pending = False
        self._addr_event = asyncio.Event()
        self.fixed = zone_records(self.zones)
        # mux's gateway is followed once an unprivileged caller needs its prefixes.
        self.mux: tuple[NsKey, int] | None = None
        self.prefixes: tuple[IPv6Network, ...] = (cfg.mux.ula.network,)

    # -- publishing -------------------------------------------------------------------

    def fqdns(self, name: str, aliases: Sequence[str] = ()) -> list[str]:
        labels = list(dict.fromkeys([name, *aliases]))
        return [f"{lab}.{self.zones.public}." for lab in labels] + [
            f"{lab}.{self.zones.internal}." for lab in labels
        ]

    def published_names(self, pub: Publication) -> list[str]:
        """The names a caller may show as published: none when no sink serves them."""
        return self.fqdns(pub.name, pub.aliases) if self.sinks else []

    def publish(
        self,
        name: str,
        aliases: Sequence[str],
        ifname: str,
        nsfd: int,
        netns: str,
        lifeline: int,
        unit: str = "",
        uid: int = 0,
        via: str = "dbus",
    ) -> Publication:
        """Publish (or add a lifeline to) `name`. Takes ownership of nsfd and lifeline,
        also on failure (they are closed)."""
        try:
            names.check_name(name)
            aliases = tuple(dict.fromkeys(check_alias(a) for a in aliases if a != name))
            check_ifname(ifname)
            check_netns_fd(nsfd)
            check_lifeline(lifeline)
            key = ns_key(nsfd)
            labels = {name, *aliases}
            if uid != 0:
                self._check_user(uid, labels)
            for other in list(self.pubs.values()):
                clash = labels & other.labels
                if not clash:
                    continue
                if uid == 0 and other.uid != 0 and netns == name:
                    # The workload of that name starts: whoever took its name gives it back.
                    self.drop(other, f"name reserved for workload {name}")
                    continue
                if other.netns == netns and other.nskey != key and not netns.startswith("pid:"):
                    # /run/netns/NAME was re-created: the old workload of that name is gone
                    # (or was taken down while something still held its lifeline).
                    self.drop(other, f"netns {netns} was re-created")
                    continue
                if (
                    other.name == name
                    and other.nskey == key
                    and other.ifname == ifname
                    and other.aliases == aliases
                ):
                    if other.uid != uid:
                        raise Denied(
                            f"{name!r} was published by uid {other.uid}: only that user may hold it"
                        )
                    os.close(nsfd)
                    nsfd = -1
                    self._add_lifeline(other, lifeline)
                    return other
                raise NameTaken(
                    f"DNS name {sorted(clash)[0]!r} is already published by workload "
                    f"{other.name!r} (netns {other.netns}, interface {other.ifname})"
                )
        except BaseException:
            for fd in (nsfd, lifeline):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            raise
        pub = Publication(
            self.next_id, name, aliases, ifname, netns, nsfd, key, unit=unit, uid=uid, via=via
        )
        self.next_id += 1
        try:
            self._start(pub)
        except BaseException:
            os.close(lifeline)
            raise
        self._store_state(pub)
        self._add_lifeline(pub, lifeline)
        journal.info(
            f"published {name} ({', '.join(self.fqdns(name, aliases))}) on {ifname} in {netns}",
            journal.RECORD_PUBLISHED,
            workload=name,
            netns=netns,
            ifname=ifname,
        )
        return pub

    def _start(self, pub: Publication) -> None:
        try:
            pub.token, pub.seen = self.follower.follow(
                pub.nsfd, pub.ifname, functools.partial(self._addresses, pub)
            )
        except OSError as e:
            os.close(pub.nsfd)
            raise NotFollowed(f"cannot follow {pub.ifname} in {pub.netns}: {e}") from None
        if pub.uid != 0:
            try:
                self._check_device(pub)
            except BaseException:
                self.follower.unfollow(pub.nskey, pub.ifname, pub.token)
                os.close(pub.nsfd)
                raise
        pub.addresses = self._trusted(pub, pub.seen)
        self.pubs[pub.name] = pub
        self._changed()

    # -- what an unprivileged caller may publish (verify.py) ----------------------------

    def held(self, uid: int) -> tuple[int, int]:
        """(publications, lifelines) that `uid` holds."""
        mine = [p for p in self.pubs.values() if p.uid == uid]
        return len(mine), sum(len(p.lifelines) for p in mine)

    def _check_user(self, uid: int, labels: set[str], pending: int = 0) -> None:
        for label in sorted(labels):
            why = verify.reserved(label, self.cfg.paths.workloads_dir)
            if why:
                raise Denied(f"DNS name {label!r} is reserved: {why}")
        pubs, fds = self.held(uid)
        limits = self.cfg.phonebook
        why = verify.over_limit(pubs, limits.user_publications, "publications", uid)
        why = why or verify.over_limit(fds + pending, limits.user_connections, "lifelines", uid)
        if why:
            raise Denied(why)

    def _mux_fd(self) -> int:
        """mux's namespace, its gateway followed for the advertised prefixes."""
        mux = self.cfg.mux
        try:
            fd = nsutil.open_netns(mux.netns)
        except OSError:
            raise Denied(
                f"mux (netns {mux.netns}) is not running: no device can be checked"
            ) from None
        key = ns_key(fd)
        if self.mux is None or self.mux[0] != key:
            if self.mux is not None:
                self.follower.unfollow(self.mux[0], mux.gateway, self.mux[1])
            try:
                token, addrs = self.follower.follow(fd, mux.gateway, self._gateway)
            except OSError as e:
                os.close(fd)
                raise NotFollowed(f"cannot follow {mux.gateway} in {mux.netns}: {e}") from None
            self.mux = (key, token)
            self._gateway(addrs)
        return fd

    def _gateway(self, addrs: tuple[Address, ...]) -> None:
        prefixes = verify.advertised([a for a in addrs if a.usable], self.cfg.mux.ula.network)
        if prefixes == self.prefixes:
            return
        self.prefixes = prefixes
        for pub in self.pubs.values():
            if pub.uid != 0:
                self._addresses(pub, pub.seen)

    def _check_device(self, pub: Publication) -> None:
        muxfd = self._mux_fd()
        try:
            index = verify.device_ifindex(pub.nsfd, pub.ifname, muxfd, self.cfg.mux.parent)
            pub.routed = verify.routed_addresses(pub.nsfd, pub.ifname, muxfd)
        finally:
            os.close(muxfd)
        watcher = self.follower.watchers.get(pub.nskey)
        pub.link = (index, watcher.identity(index, pub.ifname) if watcher else 0)

    def _routed(self, pub: Publication) -> frozenset[ipaddress.IPv6Address]:
        """What mux routes to a routed veth now (a renumbering adds to it); nothing if mux
        cannot be read."""
        try:
            muxfd = self._mux_fd()
        except Denied:
            return frozenset()
        try:
            return verify.routed_addresses(pub.nsfd, pub.ifname, muxfd) or frozenset()
        except OSError:
            return frozenset()
        finally:
            os.close(muxfd)

    def _trusted(self, pub: Publication, addrs: tuple[Address, ...]) -> tuple[Address, ...]:
        """Root's addresses as they are; others' only on the checked device, in prefixes."""
        if pub.uid == 0:
            return addrs
        watcher = self.follower.watchers.get(pub.nskey)
        index, birth = pub.link
        if not birth or watcher is None or watcher.identity(index, pub.ifname) != birth:
            return ()  # the checked device is gone (or was replaced): nothing to vouch for
        if pub.routed is not None:  # a routed veth: mux's routes vouch (now), not DAD
            pub.routed = self._routed(pub)
            return tuple(a for a in addrs if a.ip in pub.routed)
        return verify.trusted_addresses(addrs, self.prefixes)

    def _store_state(self, pub: Publication) -> None:
        if not self.notifier.enabled:
            return
        fd = os.memfd_create(f"phonebook-{pub.id}", os.MFD_CLOEXEC)
        os.write(fd, json.dumps(pub.state()).encode())
        pub.state_fd = fd
        self.notifier.store(f"s.{pub.id}", fd)
        self.notifier.store(f"n.{pub.id}", pub.nsfd)

    def _add_lifeline(self, pub: Publication, fd: int, stored: str = "") -> None:
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        if not stored:
            stored = f"l.{pub.id}.{pub.next_lifeline}"
            if self.notifier.enabled:
                self.notifier.store(stored, fd)
        pub.next_lifeline += 1
        pub.lifelines[fd] = stored
        asyncio.get_running_loop().add_reader(fd, self._lifeline_readable, pub, fd)

    def _lifeline_readable(self, pub: Publication, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return
            data = b""
        if data:
            return  # a holder wrote something: ignore it, the end of the stream matters
        self._drop_lifeline(pub, fd)
        if not pub.lifelines:
            self.drop(pub, "every lifeline closed")

    def _drop_lifeline(self, pub: Publication, fd: int) -> None:
        name = pub.lifelines.pop(fd)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)
        if self.notifier.enabled:
            self.notifier.remove(name)
        os.close(fd)

    def drop(self, pub: Publication, reason: str) -> None:
        if self.pubs.get(pub.name) is not pub:
            return
        del self.pubs[pub.name]
        for fd in list(pub.lifelines):
            self._drop_lifeline(pub, fd)
        self.follower.unfollow(pub.nskey, pub.ifname, pub.token)
        if self.notifier.enabled:
            self.notifier.remove(f"n.{pub.id}")
            self.notifier.remove(f"s.{pub.id}")
        os.close(pub.nsfd)
        if pub.state_fd >= 0:
            os.close(pub.state_fd)
        pub.log(f"removed {pub.name}: {reason}", journal.RECORD_REMOVED)
        self._changed()

    async def settle(self, pub: Publication, timeout: float) -> None:
        """Ready means resolvable: wait until DAD of pub's addresses is over (optimistic
        ones are not published) and every sink has the resulting records (Knot acknowledged
        the update, tinydns rebuilt data.cdb). StateError naming what did not happen within
        `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pubs.get(pub.name) is pub and any(in_dad(a) for a in pub.addresses):
            try:
                await asyncio.wait_for(self._addr_event.wait(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise NotServed(
                    f"{pub.name}: duplicate address detection of "
                    + ", ".join(str(a.ip) for a in pub.addresses if in_dad(a))
                    + f" did not end within {timeout:g}s"
                ) from None
        while self._emit_pending:
            await asyncio.sleep(0)
        own = {str(a.ip) for a in pub.addresses}
        # A server this very workload runs (netmux@dns: Knot) cannot answer before `up`
        # execs it: not waited for.
        waits = {
            sink: asyncio.ensure_future(sink.synced())
            for sink in self.sinks
            if not (isinstance(sink, Rfc2136Sink) and _same_ip(sink.server, own))
        }
        if not waits:
            return
        left = max(deadline - loop.time(), 0.0)
        _, pending = await asyncio.wait(waits.values(), timeout=left)
        for t in pending:
            t.cancel()
        late = [sink for sink, t in waits.items() if t in pending]
        if late:
            parts = []
            for sink in late:
                where = f" at {sink.server}" if isinstance(sink, Rfc2136Sink) else ""
                err = str(getattr(sink, "last_error", ""))
                parts.append(f"{sink.name}{where}" + (f" ({err})" if err else ""))
            why = "; ".join(parts)
            raise NotServed(
                f"{pub.name}: DNS sink {why} did not take the record within {timeout:g}s "
                f"(journalctl -u phonebookd)"
            )

    async def watch_unit_of(self, pub: Publication) -> None:
        """Have pub's unit watched (its records go when it stops), if it has one."""
        if pub.unit:
            await self.units.watch(pub.unit)

    def unpublish(self, name: str) -> bool:
        pub = self.pubs.get(name)
        if pub is None:
            return False
        self.drop(pub, "unpublished")
        return True

    def drop_unit(self, unit: str) -> None:
        for pub in [p for p in self.pubs.values() if p.unit == unit]:
            self.drop(pub, f"unit {unit} stopped")

    def _addresses(self, pub: Publication, addrs: tuple[Address, ...]) -> None:
        old = {a.ip for a in pub.addresses if a.usable}
        pub.seen = addrs
        addrs = self._trusted(pub, addrs)
        pub.addresses = addrs
        self._addr_event.set()  # wakes every settle(); the next change gets a new event
        self._addr_event = asyncio.Event()
        pub.records = None
        new = {a.ip for a in addrs if a.usable}
        if old != new and pub.state_fd >= 0 and self.follower.guest(pub.nskey, pub.ifname):
            # A VM guest's addresses are learned, not read back: keep them for a restart.
            data = json.dumps({**pub.state(), "guest": sorted(map(str, new))}).encode()
            os.ftruncate(pub.state_fd, 0)
            os.pwrite(pub.state_fd, data, 0)
        if old != new:
            now = ", ".join(sorted(map(str, new))) or "none"
            pub.log(f"{pub.name}: addresses now {now}", journal.ADDRESS_CHANGED)
            self._changed()

    # -- records ----------------------------------------------------------------------

    def records(self) -> list[Record]:
        """Every record; an address two publications hold gets root's PTR, else the oldest's."""
        for pub in self.pubs.values():
            if pub.records is None:
                pub.records = publication_records(pub.name, pub.aliases, pub.addresses, self.zones)
        order = sorted(self.pubs.values(), key=lambda p: (p.uid != 0, p.id))
        return self.fixed + first_ptr_wins(p.records or [] for p in order)

    def refresh(self) -> None:
        self._changed()

    def _changed(self) -> None:
        """Something changed: the sinks hear of it once per turn of the loop, however many
        publications changed in it (one address event can concern hundreds)."""
        if not self._emit_pending:
            self._emit_pending = True
            asyncio.get_running_loop().call_soon(self._emit)

    def _emit(self) -> None:
        self._emit_pending = False
        recs = self.records()
        for sink in self.sinks:
            sink.update(recs)
        for cb in self.listeners:
            cb()
        self.notifier.notify(f"STATUS=serving {len(self.pubs)} publication(s)")

    # -- restart ----------------------------------------------------------------------

    def restore(self, fds: list[tuple[str, int]]) -> int:
        """Adopt publications from the fd store; close and forget anything incomplete."""
        groups: dict[int, dict[str, list[tuple[str, int]]]] = {}
        for fdname, fd in fds:
            parts = fdname.split(".")
            if len(parts) >= 2 and parts[0] in ("s", "n", "l") and parts[1].isdigit():
                groups.setdefault(int(parts[1]), {}).setdefault(parts[0], []).append((fdname, fd))
            else:
                os.close(fd)
        restored = 0
        for pid, g in sorted(groups.items()):
            self.next_id = max(self.next_id, pid + 1)
            ok = "s" in g and "n" in g and "l" in g
            pub = None
            if ok:
                try:
                    st = json.loads(os.pread(g["s"][0][1], 65536, 0))
                    names.check_name(st["name"])
                    aliases = tuple(check_alias(a) for a in st["aliases"])
                    nsfd = g["n"][0][1]
                    check_netns_fd(nsfd)
                    pub = Publication(
                        pid,
                        st["name"],
                        aliases,
                        check_ifname(st["ifname"]),
                        str(st["netns"]),
                        nsfd,
                        ns_key(nsfd),
                        unit=str(st["unit"]),
                        uid=int(st["uid"]),
                        via=str(st["via"]),
                        state_fd=g["s"][0][1],
                    )
                    if pub.name in self.pubs:
                        raise StateError("duplicate")
                    self._start(pub)
                    learned = self.follower.guest(pub.nskey, pub.ifname)
                    if learned and st.get("guest"):
                        learned.preload([IPv6Address(a) for a in st["guest"]])
                except (NetmuxError, ValueError, KeyError, TypeError, OSError) as e:
                    journal.warning(f"phonebook: dropping stored publication {pid}: {e}")
                    pub = None
            if pub is None:
                for items in g.values():
                    for fdname, fd in items:
                        self.notifier.remove(fdname)
                        with contextlib.suppress(OSError):
                            os.close(fd)
                continue
            for fdname, fd in g["l"]:
                self._add_lifeline(pub, fd, stored=fdname)
                pub.next_lifeline = max(pub.next_lifeline, int(fdname.split(".")[-1]) + 1)
            restored += 1
            # A lifeline closed while we were down: its reader fires at once and drops it.
        return restored

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()
        self.follower.close()


def _same_ip(server: str, addrs: set[str]) -> bool:
    try:
        return str(ipaddress.ip_address(server)) in addrs
    except ValueError:
        return False
