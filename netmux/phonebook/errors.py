"""What a publication can fail with, and the one table that names each failure on D-Bus.

Each class has its own D-Bus error name (`DBUS_ERRORS`), so a caller can tell "the name is
taken" from "the interface cannot be followed" or "the sinks did not answer in time". The
adapter maps exceptions through `dbus_error_name` (the most specific class wins) and the
client maps names back through `from_dbus_error`.
"""

from __future__ import annotations

from ..errors import NetmuxError, StateError, UsageError

IFACE = "org.netmux.Phonebook1"
PREFIX = IFACE + ".Error."


class Denied(StateError):
    """The caller may publish, but not this (a reserved name, a forged device, a limit)."""


class NameTaken(StateError):
    """Another publication holds one of the DNS names asked for."""


class NotFollowed(StateError):
    """The interface cannot be followed in the namespace given (gone, or no such netns)."""


class NotServed(StateError):
    """The record was accepted but not served in time (DAD did not end, a sink was late)."""


class CallerUnknown(StateError):
    """The bus could not say who the caller is (it left before its call was handled)."""


# Most specific first: the first class an exception is an instance of names its error.
DBUS_ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (Denied, PREFIX + "AccessDenied"),
    (NameTaken, PREFIX + "NameTaken"),
    (NotFollowed, PREFIX + "NotFollowed"),
    (NotServed, PREFIX + "NotServed"),
    (CallerUnknown, PREFIX + "CallerUnknown"),
    (UsageError, PREFIX + "InvalidArgument"),
    (NetmuxError, PREFIX + "Failed"),
)
ERR_FAILED = PREFIX + "Failed"


def dbus_error_name(e: BaseException) -> str:
    """The D-Bus error name for `e`; Failed for anything else (a bug, still answered)."""
    for cls, name in DBUS_ERRORS:
        if isinstance(e, cls):
            return name
    return ERR_FAILED


def from_dbus_error(name: str, text: str) -> NetmuxError:
    """The exception a client raises for phonebookd's error `name` with message `text`."""
    for cls, err in DBUS_ERRORS:
        if err == name and issubclass(cls, NetmuxError):
            return (StateError if cls is NetmuxError else cls)(f"phonebook: {text}")
    return StateError(f"phonebook: {name}: {text}")
