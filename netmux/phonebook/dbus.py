"""D-Bus adapter: org.netmux.Phonebook1 at /org/netmux/Phonebook1 (dbus-next, system bus).

Thin: it checks arguments, finds the caller's namespace and unit, and calls the Phonebook.
Every method is one row of `METHODS` (name, arguments, reply, handler): the row drives the
dispatch, the signature check, the reply and the introspection (the ServiceInterface gets
its declarations from the table; it owns the signal and the properties). Calls go through
a message handler because it needs the caller's unique name, which dbus-next does not
hand to ServiceInterface methods. Each exception class answers with its own error name
(errors.DBUS_ERRORS). Who may call is the
policy file's job (dbus/org.netmux.Phonebook1.conf: root and group netmux).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import BusType, MessageType, PropertyAccess
from dbus_next.message import Message
from dbus_next.service import ServiceInterface, dbus_property, method, signal
from dbus_next.signature import Variant

from .. import journal
from ..errors import NetmuxError, StateError, UsageError
from ..sd import unit_of
from .checks import check_netns_name
from .client import call_method
from .errors import CallerUnknown, Denied, dbus_error_name
from .sinks import TinydnsSink

if TYPE_CHECKING:
    from .daemon import Phonebook

BUS_NAME = "org.netmux.Phonebook1"
PATH = "/org/netmux/Phonebook1"
IFACE = "org.netmux.Phonebook1"
SYSTEMD = "org.freedesktop.systemd1"


class Phonebook1(ServiceInterface):
    """Introspection, the RecordsChanged signal and properties; calls go through `Adapter`
    (the method declarations are added from `METHODS` below)."""

    def __init__(self, book: Phonebook) -> None:
        super().__init__(IFACE)
        self.book = book

    @signal()
    def RecordsChanged(self) -> "u":
        return len(self.book.records())

    @dbus_property(access=PropertyAccess.READ)
    def Rebuilds(self) -> "t":
        return sum(len(s.rebuilds) for s in self.book.sinks if isinstance(s, TinydnsSink))

    @dbus_property(access=PropertyAccess.READ)
    def Count(self) -> "u":
        return len(self.book.pubs)


Handler = Callable[["Adapter", Message, list[int]], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    name: str
    args: tuple[tuple[str, str], ...]  # (name, D-Bus type) of each argument
    reply: str
    handler: Handler
    doc: str

    @property
    def signature(self) -> str:
        return "".join(t for _, t in self.args)


class Adapter:
    def __init__(self, bus: MessageBus, book: Phonebook) -> None:
        self.bus = bus
        self.book = book
        self.iface = Phonebook1(book)
        self.tasks: set[asyncio.Task[None]] = set()

    # -- dispatch ---------------------------------------------------------------------

    def handle(self, msg: Message) -> bool:
        if (
            msg.message_type != MessageType.METHOD_CALL
            or msg.path != PATH
            or msg.interface not in (IFACE, None)
            or msg.member not in METHODS
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
        """Run the row's handler; every exception answers with its class's error name."""
        fds = list(msg.unix_fds or [])
        m = METHODS[msg.member]
        try:
            if msg.signature != m.signature:
                raise UsageError(f"{m.name} takes signature {m.signature!r}, got {msg.signature!r}")
            body = await m.handler(self, msg, fds)
            self.bus.send(Message.new_method_return(msg, m.reply, [body]))
        except Exception as e:
            if isinstance(e, NetmuxError):
                text = str(e)
            else:  # a bug: the caller still gets an answer
                journal.error(f"{msg.member} failed: {e!r}")
                text = f"internal error: {e}"
            self.bus.send(Message.new_error(msg, dbus_error_name(e), text))
        finally:
            for fd in fds:  # Phonebook.publish dup'ed what it keeps
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- the methods (rows of METHODS) --------------------------------------------------

    async def list_records(self, msg: Message, fds: list[int]) -> Any:
        return [[r.name + ".", r.rtype, _dotted(r), r.ttl] for r in self.book.records()]

    async def publications(self, msg: Message, fds: list[int]) -> Any:
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

    async def unpublish(self, msg: Message, fds: list[int]) -> Any:
        (name,) = msg.body
        pub = self.book.pubs.get(name) if isinstance(name, str) else None
        if pub is not None:
            uid = await self._caller_uid(msg.sender)
            if uid not in (0, pub.uid):
                raise Denied(f"{name!r} was published by uid {pub.uid}; only it or root may")
        return self.book.unpublish(name)

    async def publish(self, msg: Message, fds: list[int]) -> Any:
        name, ifname, netns, idx = msg.body
        return await self._publish(msg, fds, name, [], ifname, netns, idx)

    async def publish_with_aliases(self, msg: Message, fds: list[int]) -> Any:
        name, aliases, ifname, netns, idx = msg.body
        return await self._publish(msg, fds, name, aliases, ifname, netns, idx)

    async def _publish(
        self,
        msg: Message,
        fds: list[int],
        name: str,
        aliases: list[str],
        ifname: str,
        netns: str,
        idx: int,
    ) -> Any:
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
        await self.book.watch_unit_of(pub)
        # The reply is the caller's "ready": only once every sink serves the record.
        await self.book.settle(pub, self.book.cfg.workload.timeout)
        return self.book.published_names(pub)

    # -- the bus ------------------------------------------------------------------------

    async def _caller_pid(self, sender: str | None) -> int:
        return int(await _caller(self.bus, "GetConnectionUnixProcessID", sender))

    async def _caller_uid(self, sender: str | None) -> int:
        return int(await _caller(self.bus, "GetConnectionUnixUser", sender))

    def emit(self) -> None:
        self.iface.RecordsChanged()


async def _bus_call(bus: MessageBus, member: str, sig: str, body: list[Any]) -> Any:
    dbus = "org.freedesktop.DBus"
    reply = await call_method(bus, dbus, "/org/freedesktop/DBus", dbus, member, sig, body)
    if reply is None or reply.message_type == MessageType.ERROR:
        raise StateError(f"D-Bus {member} failed")
    return reply.body[0] if reply.body else None


async def _caller(bus: MessageBus, member: str, sender: str | None) -> Any:
    try:
        return await _bus_call(bus, member, "s", [sender])
    except StateError as e:
        raise CallerUnknown(f"cannot tell who called ({e}): the caller left?") from None


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "Publish",
            (("name", "s"), ("ifname", "s"), ("netns", "s"), ("lifeline", "h")),
            "as",
            Adapter.publish,
            "Publish NAME for IFNAME in netns NETNS ('' = the caller's) while LIFELINE lives.",
        ),
        Method(
            "PublishWithAliases",
            (("name", "s"), ("aliases", "as"), ("ifname", "s"), ("netns", "s"), ("lifeline", "h")),
            "as",
            Adapter.publish_with_aliases,
            "Publish, with extra DNS labels besides NAME.",
        ),
        Method(
            "Unpublish",
            (("name", "s"),),
            "b",
            Adapter.unpublish,
            "Remove NAME now, closing its lifelines.",
        ),
        Method(
            "List",
            (),
            "a(sssu)",
            Adapter.list_records,
            "Every record: (owner FQDN, type, value, TTL).",
        ),
        Method(
            "Publications",
            (),
            "a(ssssasas)",
            Adapter.publications,
            "(name, ifname, netns, unit, DNS names, usable addresses) of each publication.",
        ),
    )
}


def _declare(m: Method) -> Any:
    """The introspection stub of a row: dbus-next reads the argument types from the
    signature; calls never reach it (Adapter.handle answers them first)."""

    def stub(self: Phonebook1, *args: Any) -> None:
        raise AssertionError("dispatched by Adapter.handle")

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [
        inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=t)
        for n, t in m.args
    ]
    stub.__signature__ = inspect.Signature(params, return_annotation=m.reply)  # type: ignore[attr-defined]
    stub.__name__ = stub.__qualname__ = m.name
    stub.__doc__ = m.doc
    return method(name=m.name)(stub)


for _m in METHODS.values():
    setattr(Phonebook1, _m.name, _declare(_m))


class SystemdUnits:
    """Unit watching over D-Bus (units.UnitWatcher): systemd's PropertiesChanged on the
    unit says when it stops, and the phonebook drops its records then."""

    def __init__(self, bus: MessageBus, book: Phonebook) -> None:
        self.bus = bus
        self.book = book
        self.units: dict[str, str] = {}  # unit -> object path being watched
        self.systemd = True
        self.subscribed = False
        self.tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, bus: MessageBus, book: Phonebook) -> SystemdUnits:
        """Watch signals on `bus`, and the units of publications restored from the fd store."""
        self = cls(bus, book)
        bus.add_message_handler(self.handle)
        for unit in sorted({p.unit for p in book.pubs.values() if p.unit}):
            await self.watch(unit)
        return self

    def handle(self, msg: Message) -> bool:
        if msg.message_type == MessageType.SIGNAL and msg.member == "PropertiesChanged":
            self._unit_changed(msg)
        return False

    async def _systemd(self, path: str, iface: str, member: str, sig: str, body: list[Any]) -> Any:
        reply = await call_method(self.bus, SYSTEMD, path, iface, member, sig, body)
        if reply is None or reply.message_type == MessageType.ERROR:
            err = f"{reply.error_name} {reply.body}" if reply else "no reply"
            raise StateError(f"systemd {member}: {err}")
        return reply.body

    async def watch(self, unit: str) -> None:
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
            await _bus_call(self.bus, "AddMatch", "s", [rule])
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
            await _bus_call(self.bus, "RemoveMatch", "s", [rule])


def _dotted(r: Any) -> str:
    return str(r.value) + "." if r.rtype in ("NS", "PTR") else str(r.value)


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
    from dbus_next.constants import RequestNameReply

    reply = await bus.request_name(BUS_NAME)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        raise StateError(f"cannot own {BUS_NAME} on the bus ({reply})")
    return bus
