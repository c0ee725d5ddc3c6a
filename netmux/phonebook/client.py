"""Clients of phonebookd: the publish socket (what `netmux up`/`down` use) and D-Bus.

`publish()` makes a pipe, hands its read end to phonebookd as the lifeline and returns the
write end: whoever holds it (the exec'ed workload inherits it) keeps the record alive.
When phonebookd is not on the bus, `publish()` returns None and says so in the journal —
a host without phonebookd still runs workloads. A refusal (name taken, bad argument) is an
error: the caller asked for something that cannot be.

`netmux up` and `down` talk to the publish socket first (netns= and unpublish= options,
phonebook/publish_socket.py): the same request and the same answer as D-Bus, without
importing dbus-next (~85 ms, docs/benchmarks.md). Only when nothing listens there do
they fall back to D-Bus, which also covers bus activation and an absent phonebookd.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import become, journal
from ..errors import NetmuxError, StateError

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


async def call_method(
    bus: Any, destination: str, path: str, interface: str, member: str, signature: str,
    body: list[Any], fds: Sequence[int] = (),
) -> Any:  # fmt: skip
    """One D-Bus method call on a connected MessageBus: its reply (None: no reply). Here for
    phonebookd's calls to the bus and systemd too (netmux/phonebook/dbus.py)."""
    from dbus_next.message import Message

    return await bus.call(
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body,
            unix_fds=list(fds),
        )
    )


async def _call(
    member: str, signature: str, body: list[object], fds: Sequence[int], address: str | None
) -> list[object]:
    if not address and not _system_bus_exists():
        raise Unavailable("no system bus")
    from dbus_next.aio.message_bus import MessageBus
    from dbus_next.constants import BusType, MessageType

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
        reply = await call_method(bus, BUS_NAME, PATH, IFACE, member, signature, body, fds)
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
    import asyncio  # only for D-Bus: `up`/`down` use the publish socket

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


class NoSocket(OSError):
    """Nothing listens on the publish socket (phonebookd is not running, or only on D-Bus)."""


def _socket_request(path: Path, line: str, timeout: float) -> tuple[socket.socket, list[str]]:
    """Send one request line; (the connection, the words after "ok"). NoSocket when nothing
    listens, Unavailable when no answer comes in time, StateError for a refusal."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NoSocket(str(e)) from None
        s.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        s.close()
        raise Unavailable(f"no answer within {timeout}s") from None
    except BaseException:
        s.close()
        raise
    text = data.decode(errors="replace").strip()
    if not text.startswith("ok"):
        s.close()
        raise StateError(f"phonebook: {text[6:] if text.startswith('error ') else text!r}")
    s.settimeout(None)
    return s, text.split()[1:]


def publish_netns(
    path: Path,
    name: str,
    ifname: str,
    netns: str,
    aliases: Sequence[str] = (),
    timeout: float = 3.0,
    unit: str | None = None,
) -> Published | None:
    """publish() through the publish socket at `path`; NoSocket if nothing listens there.
    `unit`: the unit whose stop removes the records when the caller is not in it (the
    warm launcher's worker, netmux/launcher.py)."""
    line = " ".join([f"netns={netns}", *([f"unit={unit}"] if unit else []), name, ifname,
                     *aliases])  # fmt: skip
    try:
        s, names = _socket_request(path, line, timeout)
    except Unavailable as e:
        journal.info(f"{name}: not published in DNS: phonebookd is not available ({e})",
                     workload=name)  # fmt: skip
        return None
    return Published(s.detach(), tuple(names))


def unpublish_workload(name: str, path: Path | None) -> bool:
    """unpublish() through the publish socket at `path` when something listens there.

    No socket file at all: phonebookd (which always listens there) is not running and was
    not restarting (systemd keeps its runtime directory across a restart), so it holds no
    record and D-Bus would only activate it to say so. A socket that refuses: it may be
    restarting, and D-Bus waits for it."""
    if path is not None:
        if not os.path.lexists(path):
            return False
        try:
            s, words = _socket_request(path, f"unpublish={name}", 2.0)
        except NoSocket:
            pass
        except Exception as e:  # best effort, as unpublish()
            journal.warning(f"{name}: could not unpublish: {e}", workload=name)
            return False
        else:
            s.close()
            return words == ["yes"]
    return unpublish(name)


def publish_workload(
    name: str,
    ifname: str,
    aliases: Sequence[str],
    hold: str,
    timeout: float = 10.0,
    socket_path: Path | None = None,
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
    try:
        if socket_path is None:
            raise NoSocket("no socket path")
        pub = publish_netns(socket_path, name, ifname, name, aliases, timeout + 2.0,
                            become.acting_for_unit())  # fmt: skip
    except NoSocket:
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
