"""D-Bus adapter: org.netmux.Phonebook1 at /org/netmux/Phonebook1 (dbus-next, system bus).

Thin: it checks arguments, finds the caller's namespace and unit, and calls the Phonebook.
Method calls are dispatched by a message handler (it needs the caller's unique name, which
dbus-next does not hand to ServiceInterface methods); the ServiceInterface declares the
same methods for introspection and owns the signal and the properties. Who may call is the
policy file's job (dbus/org.netmux.Phonebook1.conf: root and group netmux).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType, PropertyAccess
from dbus_next.message import Message
from dbus_next.service import ServiceInterface, dbus_property, method, signal
from dbus_next.signature import Variant

from .. import journal
from ..errors import NetmuxError, StateError, UsageError
from ..sd import unit_of
from .daemon import check_netns_name
from .sinks import TinydnsSink
from .verify import Denied

if TYPE_CHECKING:
    from .daemon import Phonebook

BUS_NAME = "org.netmux.Phonebook1"
PATH = "/org/netmux/Phonebook1"
IFACE = "org.netmux.Phonebook1"
ERR_TAKEN = "org.netmux.Phonebook1.Error.NameTaken"
ERR_INVALID = "org.netmux.Phonebook1.Error.InvalidArgument"
ERR_FAILED = "org.netmux.Phonebook1.Error.Failed"
ERR_DENIED = "org.netmux.Phonebook1.Error.AccessDenied"
SYSTEMD = "org.freedesktop.systemd1"


class Phonebook1(ServiceInterface):
    """Introspection, the RecordsChanged signal and properties; calls go through `Adapter`."""

    def __init__(self, book: Phonebook) -> None:
        super().__init__(IFACE)
        self.book = book

    @method()
    def Publish(self, name: "s", ifname: "s", netns: "s", lifeline: "h") -> "as":
        """Publish NAME for IFNAME in netns NETNS ('' = the caller's) while LIFELINE lives."""

    @method()
    def PublishWithAliases(
        self, name: "s", aliases: "as", ifname: "s", netns: "s", lifeline: "h"
    ) -> "as":
        """Publish, with extra DNS labels besides NAME."""

    @method()
    def Unpublish(self, name: "s") -> "b":
        """Remove NAME now, closing its lifelines."""

    @method()
    def List(self) -> "a(sssu)":
        """Every record: (owner FQDN, type, value, TTL)."""

    @method()
    def Publications(self) -> "a(ssssasas)":
        """(name, ifname, netns, unit, DNS names, usable addresses) of each publication."""

    @signal()
    def RecordsChanged(self) -> "u":
        return len(self.book.records())

    @dbus_property(access=PropertyAccess.READ)
    def Rebuilds(self) -> "t":
        return sum(len(s.rebuilds) for s in self.book.sinks if isinstance(s, TinydnsSink))

    @dbus_property(access=PropertyAccess.READ)
    def Count(self) -> "u":
        return len(self.book.pubs)


class Adapter:
    def __init__(self, bus: MessageBus, book: Phonebook) -> None:
        self.bus = bus
        self.book = book
        self.iface = Phonebook1(book)
        self.units: dict[str, str] = {}  # unit -> object path being watched
        self.systemd = True
        self.subscribed = False
        self.tasks: set[asyncio.Task[None]] = set()

    # -- dispatch ---------------------------------------------------------------------

    def handle(self, msg: Message) -> bool:
        if msg.message_type == MessageType.SIGNAL and msg.member == "PropertiesChanged":
            self._unit_changed(msg)
            return False
        if (
            msg.message_type != MessageType.METHOD_CALL
            or msg.path != PATH
            or msg.interface not in (IFACE, None)
            or msg.member
            not in ("Publish", "PublishWithAliases", "Unpublish", "List", "Publications")
        ):
            if msg.message_type == MessageType.METHOD_CALL:
                self._close_fds(msg)  # fds nobody asked for must not leak
            return False
        t = asyncio.get_running_loop().create_task(self._call(msg))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return True

    @staticmethod
    def _close_fds(msg: Message) -> None:
        if msg.interface == "org.freedesktop.DBus.Properties":
            return
        for fd in msg.unix_fds or []:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _call(self, msg: Message) -> None:
        fds = list(msg.unix_fds or [])
        try:
            body = await self._dispatch(msg, fds)
            sig = {
                "Publish": "as",
                "PublishWithAliases": "as",
                "Unpublish": "b",
                "List": "a(sssu)",
                "Publications": "a(ssssasas)",
            }[msg.member]
            self.bus.send(Message.new_method_return(msg, sig, [body]))
        except Denied as e:
            self.bus.send(Message.new_error(msg, ERR_DENIED, str(e)))
        except StateError as e:
            self.bus.send(Message.new_error(msg, ERR_TAKEN, str(e)))
        except UsageError as e:
            self.bus.send(Message.new_error(msg, ERR_INVALID, str(e)))
        except NetmuxError as e:
            self.bus.send(Message.new_error(msg, ERR_FAILED, str(e)))
        except Exception as e:  # a bug: the caller still gets an answer
            journal.error(f"{msg.member} failed: {e!r}")
            self.bus.send(Message.new_error(msg, ERR_FAILED, f"internal error: {e}"))
        finally:
            for fd in fds:  # Phonebook.publish dup'ed what it keeps
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _dispatch(self, msg: Message, fds: list[int]) -> Any:
        m, b = msg.member, msg.body
        if m == "List":
            return [[r.name + ".", r.rtype, _dotted(r), r.ttl] for r in self.book.records()]
        if m == "Publications":
            return [
                [
                    p.name,
                    p.ifname,
                    p.netns,
                    p.unit,
                    self.book.fqdns(p.name, p.aliases),
                    [str(a.ip) for a in p.addresses if a.usable],
                ]
                for p in self.book.pubs.values()
            ]
        if m == "Unpublish":
            _expect(msg, "s")
            pub = self.book.pubs.get(b[0]) if isinstance(b[0], str) else None
            if pub is not None:
                uid = await self._caller_uid(msg.sender)
                if uid not in (0, pub.uid):
                    raise Denied(f"{b[0]!r} was published by uid {pub.uid}; only it or root may")
            return self.book.unpublish(b[0])
        if m == "Publish":
            _expect(msg, "sssh")
            name, ifname, netns, idx = b
            aliases: list[str] = []
        else:
            _expect(msg, "sasssh")
            name, aliases, ifname, netns, idx = b
        if not isinstance(idx, int) or not 0 <= idx < len(fds):
            raise UsageError("lifeline: no file descriptor was passed")
        pid = await self._caller_pid(msg.sender)
        uid = await self._caller_uid(msg.sender)
        if netns and uid != 0:
            # A name under /run/netns is any namespace, mux's included: only root may.
            raise Denied("only root may name a namespace: publish in your own (netns '')")
        if netns:
            check_netns_name(netns)
            path = f"/run/netns/{netns}"
            label = netns
        else:
            path = f"/proc/{pid}/ns/net"
            label = f"pid:{pid}"
        try:
            nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise UsageError(f"netns {label!r}: {e.strerror}") from None
        lifeline = os.dup(fds[idx])
        unit = unit_of(pid) if self.book.cfg.phonebook.watch_units else ""
        if unit == "phonebookd.service":
            unit = ""
        pub = self.book.publish(name, aliases, ifname, nsfd, label, lifeline, unit, uid, "dbus")
        if pub.unit:
            await self._watch_unit(pub.unit)
        # The reply is the caller's "ready": only once every sink serves the record.
        await self.book.settle(pub, self.book.cfg.workload.timeout)
        return self.book.published_names(pub)

    async def _bus_call(self, member: str, sig: str, body: list[Any]) -> Any:
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member=member,
                signature=sig,
                body=body,
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            raise StateError(f"D-Bus {member} failed")
        return reply.body[0] if reply.body else None

    async def _caller_pid(self, sender: str | None) -> int:
        return int(await self._bus_call("GetConnectionUnixProcessID", "s", [sender]))

    async def _caller_uid(self, sender: str | None) -> int:
        return int(await self._bus_call("GetConnectionUnixUser", "s", [sender]))

    # -- systemd units ----------------------------------------------------------------

    async def _systemd(self, path: str, iface: str, member: str, sig: str, body: list[Any]) -> Any:
        reply = await self.bus.call(
            Message(
                destination=SYSTEMD,
                path=path,
                interface=iface,
                member=member,
                signature=sig,
                body=body,
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            err = f"{reply.error_name} {reply.body}" if reply else "no reply"
            raise StateError(f"systemd {member}: {err}")
        return reply.body

    async def _watch_unit(self, unit: str) -> None:
        """Drop the unit's records when it stops (besides the lifeline). Best effort."""
        if not self.systemd or unit in self.units:
            return
        mgr = "/org/freedesktop/systemd1"
        if not self.subscribed:
            try:
                await self._systemd(mgr, f"{SYSTEMD}.Manager", "Subscribe", "", [])
            except StateError as e:
                if "ServiceUnknown" in str(e) or "NameHasNoOwner" in str(e):
                    journal.debug(f"not watching units (no systemd on this bus): {e}")
                    self.systemd = False
                    return
                # e.g. already subscribed: signals flow either way
            self.subscribed = True
        try:
            (path,) = await self._systemd(mgr, f"{SYSTEMD}.Manager", "GetUnit", "s", [unit])
            rule = (
                f"type='signal',sender='{SYSTEMD}',interface='org.freedesktop.DBus.Properties',"
                f"member='PropertiesChanged',path='{path}'"
            )
            await self._bus_call("AddMatch", "s", [rule])
            self.units[unit] = path
            (state,) = await self._systemd(
                path,
                "org.freedesktop.DBus.Properties",
                "Get",
                "ss",
                [f"{SYSTEMD}.Unit", "ActiveState"],
            )
            if state.value in ("inactive", "failed"):
                self.book.drop_unit(unit)
        except StateError as e:
            journal.warning(f"not watching unit {unit}: {e}")

    def _unit_changed(self, msg: Message) -> None:
        if msg.path is None or not msg.body:
            return
        for unit, path in list(self.units.items()):
            if path != msg.path:
                continue
            changed = msg.body[1] if len(msg.body) > 1 else {}
            state = changed.get("ActiveState")
            if isinstance(state, Variant) and state.value in ("inactive", "failed"):
                self.book.drop_unit(unit)
                if not any(p.unit == unit for p in self.book.pubs.values()):
                    del self.units[unit]
                    rule = (
                        f"type='signal',sender='{SYSTEMD}',"
                        "interface='org.freedesktop.DBus.Properties',"
                        f"member='PropertiesChanged',path='{path}'"
                    )
                    t = asyncio.get_running_loop().create_task(self._remove_match(rule))
                    self.tasks.add(t)  # type: ignore[arg-type]
                    t.add_done_callback(self.tasks.discard)  # type: ignore[arg-type]

    async def _remove_match(self, rule: str) -> None:
        with contextlib.suppress(StateError):
            await self._bus_call("RemoveMatch", "s", [rule])

    def emit(self) -> None:
        self.iface.RecordsChanged()


def _dotted(r: Any) -> str:
    return str(r.value) + "." if r.rtype in ("NS", "PTR") else str(r.value)


def _expect(msg: Message, sig: str) -> None:
    if msg.signature != sig:
        raise UsageError(f"{msg.member} takes signature {sig!r}, got {msg.signature!r}")


async def start(book: Phonebook, address: str | None = None) -> MessageBus:
    """Connect, export, claim the name; RecordsChanged is emitted after every change."""
    if address:
        bus = MessageBus(bus_address=address, negotiate_unix_fd=True)
    else:
        bus = MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
    await bus.connect()
    adapter = Adapter(bus, book)
    bus.add_message_handler(adapter.handle)
    bus.export(PATH, adapter.iface)
    book.listeners.append(adapter.emit)
    book.watch_unit = adapter._watch_unit
    from dbus_next.constants import RequestNameReply

    reply = await bus.request_name(BUS_NAME)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        raise StateError(f"cannot own {BUS_NAME} on the bus ({reply})")
    for unit in sorted({p.unit for p in book.pubs.values() if p.unit}):
        await adapter._watch_unit(unit)  # publications restored from the fd store
    return bus
