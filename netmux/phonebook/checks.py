"""The checks on what a caller hands the phonebook, whichever adapter it came through
(D-Bus, the publish socket) or the fd store: names, interface names, namespace fds and
lifelines. Each raises UsageError naming what is allowed."""

from __future__ import annotations

import fcntl
import os
import stat

from .. import sd
from ..config import IFNAME_RE
from ..errors import UsageError

NETNS_NAME_ALLOWED = "a namespace name under /run/netns: 1-64 of A-Z a-z 0-9 _ . - (not . or ..)"


def check_unit_name(name: str) -> str:
    """A systemd service name as a publisher may give it (unit=): NAME.service, NAME may
    hold an instance (netmux@web.service) and systemd's escapes."""
    base = name.removesuffix(".service")
    ok = (
        name.endswith(".service")
        and 0 < len(name) <= 255
        and base != ""
        and all(c.isascii() and (c.isalnum() or c in "_.-@:\\") for c in base)
    )
    if not ok:
        raise UsageError(f"unit {name!r} is not allowed: NAME.service (letters, digits, _.-@:\\)")
    return name


def check_netns_name(name: str) -> str:
    ok = (
        isinstance(name, str)
        and 0 < len(name) <= 64
        and all(c.isascii() and (c.isalnum() or c in "_.-") for c in name)
        and name not in (".", "..")
    )
    if not ok:
        raise UsageError(f"netns {name!r} is not allowed: {NETNS_NAME_ALLOWED}")
    return name


def check_ifname(name: str) -> str:
    if not isinstance(name, str) or not IFNAME_RE.fullmatch(name) or name in (".", ".."):
        raise UsageError(
            f"interface {name!r} is not allowed: 1-15 characters of letters, digits, '_', '.', '-'"
        )
    return name


def check_lifeline(fd: int) -> None:
    """A lifeline is a socket or the read end of a pipe: its other end closing is the signal."""
    try:
        st = os.fstat(fd)
    except OSError:
        raise UsageError("lifeline is not an open file descriptor") from None
    if stat.S_ISSOCK(st.st_mode):
        return
    if stat.S_ISFIFO(st.st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
        return
    raise UsageError("lifeline must be a socket or the read end of a pipe")


def check_netns_fd(fd: int) -> None:
    """`fd` must be a network namespace (nsfs), whatever path it was opened by."""
    if not sd.is_netns(fd):
        raise UsageError("not a network namespace")
