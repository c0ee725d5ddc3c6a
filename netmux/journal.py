"""Logging with structured fields: to the journal under systemd, plain stderr elsewhere.

Every event carries NETMUX_WORKLOAD where there is one, plus NETMUX_NETNS, NETMUX_ADDRESS,
NETMUX_PREFIX, NETMUX_IFNAME where relevant; key events carry a MESSAGE_ID so that
`journalctl MESSAGE_ID=...` finds them across units.

An `address` given with its prefix length ("2001:db8::5/64" or an IPv6Interface) fills
both NETMUX_ADDRESS (the bare address) and NETMUX_PREFIX (its network), so callers pass
what they hold and `journalctl NETMUX_PREFIX=2001:db8::/64` finds every workload on it.

Under systemd (stderr is the journal stream: JOURNAL_STREAM matches fd 2) records go to
journald with their fields; anywhere else a plain line goes to stderr. `fields()` is the
pure part, for tests.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import syslog
from collections.abc import Mapping
from typing import Any

# Stable MESSAGE_IDs (128-bit, generated once; never change them).
WORKLOAD_UP = "7c03deed161c40a2ba7ff23184a1bd83"
WORKLOAD_DOWN = "032df72ef1f6406dbd22f2c15695e18e"
NIC_ADOPTED = "c84303cd2b43425b893e128533e24e68"
ADDRESS_CHANGED = "7f3ad8ed603e43918ee2ab96ba3a680b"
PREFIX_CHANGED = "eb616153533348579c818acf03783906"
DELEGATION_UPDATED = "86a309cc00ad466ab1f1a1e0f65938d3"
RENUMBERED = "d3600f2ca86a4f4ba61982a65952f260"
RECORD_PUBLISHED = "d6b3f4d4d8c54f6bbafec1d47975fe12"
RECORD_REMOVED = "2df23efbbf3c47fbaebc861440812036"
DENYLIST_SIZE = "3372c64963d340c4ac021d6aaf405b95"

_FIELDS = {"workload", "netns", "address", "prefix", "ifname"}

_quiet = False
# Fields every event of this process carries (the launcher's worker: the unit it serves).
_always: dict[str, str] = {}


def set_unit(unit: str) -> None:
    """Events of this process are about `unit`: OBJECT_SYSTEMD_UNIT=, which `journalctl -u`
    matches for root's messages, so they are found under the unit even when journald reads
    a short-lived sender's cgroup too late (the launcher's worker, netmux/launcher.py)."""
    if unit:
        _always["OBJECT_SYSTEMD_UNIT"] = unit
    else:
        _always.pop("OBJECT_SYSTEMD_UNIT", None)


def set_quiet(quiet: bool) -> None:
    """Suppress info-level messages on stderr (not in the journal)."""
    global _quiet
    _quiet = quiet


_stream: bool | None = None  # set_stream's answer, else asked of fd 2 each time


def set_stream(to_journal: bool | None) -> None:
    """Whether events go to the journal natively, decided for this process (the launcher's
    worker, whose fd 2 is a pipe to its caller's stderr); None: ask fd 2 again."""
    global _stream
    _stream = to_journal


def is_stream(fd: int, env: Mapping[str, str]) -> bool:
    """True when `fd` is the journal stream $JOURNAL_STREAM names (systemd sets it)."""
    stream = env.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def _to_journal() -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM)."""
    return is_stream(2, os.environ) if _stream is None else _stream


def fields(message_id: str | None = None, **values: Any) -> dict[str, str]:
    """The journal fields for one event. Pure.

    Names in _FIELDS become NETMUX_<NAME>; others are upper-cased and pass unchanged;
    None values are left out. An address with a prefix length also gives NETMUX_PREFIX.
    """
    extra: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key == "address":
            value, prefix = _split_address(value)
            if prefix and values.get("prefix") is None:
                extra["NETMUX_PREFIX"] = prefix
        name = f"NETMUX_{key.upper()}" if key in _FIELDS else key.upper()
        extra[name] = str(value)
    if message_id:
        extra["MESSAGE_ID"] = message_id
    return extra


def _split_address(value: Any) -> tuple[str, str | None]:
    """'2001:db8::5/64' -> ('2001:db8::5', '2001:db8::/64'); a bare address -> (it, None)."""
    if isinstance(value, ipaddress.IPv6Interface | ipaddress.IPv4Interface):
        return str(value.ip), str(value.network)
    text = str(value)
    if "/" not in text:
        return text, None
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        return text, None
    return str(iface.ip), str(iface.network)


def log(priority: int, message: str, message_id: str | None = None, **values: Any) -> None:
    """Send one event with the fields `fields()` makes of `values`."""
    extra = {**_always, **fields(message_id, **values)}
    if _to_journal():
        try:
            from systemd import journal

            journal.send(message, PRIORITY=priority, SYSLOG_IDENTIFIER=_ident(), **extra)
            return
        except ImportError:
            pass
    if priority <= syslog.LOG_WARNING or not _quiet:
        print(f"{_ident()}: {message}", file=sys.stderr, flush=True)


def _ident() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "netmux"


def info(message: str, message_id: str | None = None, **values: Any) -> None:
    log(syslog.LOG_INFO, message, message_id, **values)


def warning(message: str, message_id: str | None = None, **values: Any) -> None:
    log(syslog.LOG_WARNING, message, message_id, **values)


def error(message: str, message_id: str | None = None, **values: Any) -> None:
    log(syslog.LOG_ERR, message, message_id, **values)


def debug(message: str, **values: Any) -> None:
    if os.environ.get("NETMUX_DEBUG"):
        log(syslog.LOG_DEBUG, message, None, **values)
