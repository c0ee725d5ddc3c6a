"""Clients of phonebookd: D-Bus (what `netmux up` uses) and the publish socket (for scripts).

`publish()` makes a pipe, hands its read end to phonebookd as the lifeline and returns the
write end: whoever holds it (the exec'ed workload inherits it) keeps the record alive.
When phonebookd is not on the bus, `publish()` returns None and says so in the journal —
a host without phonebookd still runs workloads. A refusal (name taken, bad argument) is an
error: the caller asked for something that cannot be.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from .. import journal
from ..errors import NetmuxError

BUS_NAME = "org.netmux.Phonebook1"
PATH = "/org/netmux/Phonebook1"
IFACE = "org.netmux.Phonebook1"
ABSENT = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
    "org.freedesktop.DBus.Error.Spawn.ChildExited",
    "org.freedesktop.systemd1.NoSuchUnit",
)


@dataclass(frozen=True)
class Published:
    lifeline: int  # the write end: keep it open (inheritable by the workload) to keep the record
    names: tuple[str, ...]


class Unavailable(Exception):
    """phonebookd (or the bus) is not there."""


def _system_bus_exists() -> bool:
    """Cheap check before importing dbus-next: a host without a system bus pays nothing."""
    env = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "")
    if env:
        return True
    return os.path.exists("/run/dbus/system_bus_socket")


async def _call(
    member: str, signature: str, body: list[object], fds: Sequence[int], address: str | None
) -> list[object]:
    if not address and not _system_bus_exists():
        raise Unavailable("no system bus")
    from dbus_next.aio.message_bus import MessageBus
    from dbus_next.constants import BusType, MessageType
    from dbus_next.message import Message

    try:
        if address:
            bus = MessageBus(bus_address=address, negotiate_unix_fd=True)
        else:
            bus = MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        await bus.connect()
    except (OSError, ValueError, EOFError) as e:
        raise Unavailable(f"no system bus ({e})") from None
    except Exception as e:  # dbus-next raises AuthenticationError and others
        raise Unavailable(f"cannot connect to the bus ({e})") from None
    try:
        reply = await bus.call(
            Message(
                destination=BUS_NAME,
                path=PATH,
                interface=IFACE,
                member=member,
                signature=signature,
                body=body,
                unix_fds=list(fds),
            )
        )
    finally:
        bus.disconnect()  # type: ignore[no-untyped-call]
    if reply is None:
        raise Unavailable("no reply")
    if reply.message_type == MessageType.ERROR:
        err = reply.error_name or ""
        text = str(reply.body[0]) if reply.body else err
        if err in ABSENT:
            raise Unavailable(text)
        from .errors import from_dbus_error

        raise from_dbus_error(err, text)
    return list(reply.body)


def _run(
    member: str,
    signature: str,
    body: list[object],
    fds: Sequence[int] = (),
    address: str | None = None,
    timeout: float = 3.0,
) -> list[object]:
    async def go() -> list[object]:
        try:
            return await asyncio.wait_for(_call(member, signature, body, fds, address), timeout)
        except TimeoutError:
            raise Unavailable(f"no answer within {timeout}s") from None

    return asyncio.run(go())


def publish(
    name: str,
    ifname: str,
    netns: str,
    aliases: Sequence[str] = (),
    address: str | None = None,
    timeout: float = 3.0,
) -> Published | None:
    """Publish `name` over D-Bus; None (and a journal note) when phonebookd is not there."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        if aliases:
            out = _run(
                "PublishWithAliases",
                "sasssh",
                [name, list(aliases), ifname, netns, 0],
                [r],
                address,
                timeout,
            )
        else:
            out = _run("Publish", "sssh", [name, ifname, netns, 0], [r], address, timeout)
    except Unavailable as e:
        os.close(w)
        journal.info(f"{name}: not published in DNS: phonebookd is not available ({e})",
                     workload=name)  # fmt: skip
        return None
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    names = tuple(str(n) for n in out[0]) if out and isinstance(out[0], list) else ()
    return Published(w, names)


def unpublish(name: str, address: str | None = None, timeout: float = 2.0) -> bool:
    """Remove `name` now (best effort: False when phonebookd is not there)."""
    try:
        out = _run("Unpublish", "s", [name], (), address, timeout)
    except Unavailable:
        return False
    except Exception as e:  # best effort: `netmux down` must finish whatever DNS does
        journal.warning(f"{name}: could not unpublish: {e}", workload=name)
        return False
    return bool(out and out[0])


def records(address: str | None = None, timeout: float = 3.0) -> list[tuple[str, str, str, int]]:
    out = _run("List", "", [], (), address, timeout)
    rows = out[0] if out and isinstance(out[0], list) else []
    return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]


def published_addresses(name: str, address: str | None = None, timeout: float = 2.0) -> list[str]:
    """The usable addresses phonebookd publishes for `name` (for a VM: what it learned from
    the guest); [] when phonebookd is not there, does not publish it or will not tell us
    (the bus policy admits root and group netmux only): `status` must work for anyone."""
    try:
        out = _run("Publications", "", [], (), address, timeout)
    except (Unavailable, NetmuxError):
        return []
    rows = out[0] if out and isinstance(out[0], list) else []
    for r in rows:
        if r[0] == name and isinstance(r[5], list):
            return [str(a) for a in r[5]]
    return []


def hand_to_unit(pub: Published) -> bool:
    """No command will inherit the lifeline (`netmux up NAME` without CMD): give it to our
    own unit's fd store, so the record lives as long as the unit. False outside systemd."""
    from ..sd import Notifier

    n = Notifier()
    if not n.enabled:
        return False
    try:
        n.store("phonebook", pub.lifeline)
    except OSError:
        return False
    finally:
        n.close()
    return True


# --- netmux up ---------------------------------------------------------------------------

_held: list[int] = []  # lifelines this process holds itself (`netmux run`)


def publish_workload(
    name: str, ifname: str, aliases: Sequence[str], hold: str, timeout: float = 10.0
) -> Published | None:
    """The phonebook step of `netmux up`, once the address is usable. Returns once every
    sink has the record (phonebookd waits up to the start timeout, `timeout`, for them).

    hold: "exec" — the caller passes `lifeline` to the command it execs (inheritable);
    "self" — this process keeps it (`netmux run` stays until CMD exits);
    "unit" — no command: the lifeline goes to our unit's fd store (needs
    FileDescriptorStoreMax= on netmux@.service), or, outside systemd, nothing would hold it,
    so nothing is published. Never raises for an absent phonebookd; a refusal (name taken)
    is a StateError/UsageError.
    """
    from ..sd import Notifier

    if hold == "unit" and not Notifier().enabled:
        journal.info(
            f"{name}: not published in DNS: no command and no unit would hold the record",
            workload=name,
        )
        return None
    pub = publish(name, ifname, name, aliases, timeout=timeout + 2.0)
    if pub is None:
        return None
    if hold == "exec":
        os.set_inheritable(pub.lifeline, True)
    elif hold == "self":
        _held.append(pub.lifeline)
    elif not hand_to_unit(pub):
        journal.warning(f"{name}: the unit did not take the DNS lifeline", workload=name)
    if hold == "unit":
        close(pub)  # systemd holds the copy now
    return pub


def close(pub: Published | None) -> None:
    if pub is not None:
        with contextlib.suppress(OSError):
            os.close(pub.lifeline)
