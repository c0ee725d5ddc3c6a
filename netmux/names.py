"""Workload names and what is derived from them.

A workload name is used as a DNS label, a network namespace name (/run/netns/NAME) and an
interface-sized token, so it must satisfy all three at once. The stable secret and MAC
are derived from a per-host key and the name so that a workload keeps its addresses across
restarts (the kernel's stable-privacy addresses depend on the secret and the prefix only),
while two hosts never share them.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import struct
from pathlib import Path

from .errors import StateError, UsageError

MAX_NAME = 15  # IFNAMSIZ - 1: the tightest of the three namespaces
NAME_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,13}[a-z0-9])?$")
ALLOWED = (
    "a workload name is 1-15 characters of a-z, 0-9 and '-', starts with a letter, "
    "does not end with '-' and has no '--'"
)
# Names with a meaning of their own in /proc/sys/net/*/conf or in netmux itself.
RESERVED = frozenset({"all", "default", "lo"})

HOST_KEY_BYTES = 32


def check_name(name: str, what: str = "workload name") -> str:
    """Return `name` if it is a valid workload name, else raise UsageError saying why."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or "--" in name:
        raise UsageError(f"{what} {name!r} is not allowed: {ALLOWED}")
    if name in RESERVED:
        raise UsageError(f"{what} {name!r} is reserved (reserved: {', '.join(sorted(RESERVED))})")
    return name


def mux_link_name(name: str) -> str:
    """The name of a routed workload's veth end in mux (deterministic, ≤ 15 characters)."""
    check_name(name)
    return "nm" + hashlib.sha256(name.encode()).hexdigest()[:12]


def is_valid_name(name: str) -> bool:
    try:
        check_name(name)
    except UsageError:
        return False
    return True


def load_host_key(path: Path, create: bool = True) -> bytes:
    """Read the host key, creating it (mode 0600, atomically) on first use.

    Concurrent first uses agree on one key: the file is created with O_EXCL and a loser
    reads the winner's key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise StateError(f"host key {path} does not exist") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(HOST_KEY_BYTES)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process won the race
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        data = path.read_bytes()
    if len(data) != HOST_KEY_BYTES:
        raise StateError(f"host key {path} has {len(data)} bytes, expected {HOST_KEY_BYTES}")
    return data


def derive(key: bytes, *parts: str) -> bytes:
    """HMAC-SHA256 of "netmux/" + the parts joined by NUL: every MAC, secret and id netmux
    derives from the host key comes from here (workloads, mux's own links, ipmux devices),
    each with parts of its own so no two can collide. Changing this moves every address
    (tests/unit/test_names.py pins the results)."""
    return hmac.new(key, ("netmux/" + "\0".join(parts)).encode(), hashlib.sha256).digest()


def as_mac(raw: bytes) -> str:
    """Six derived bytes as a locally administered unicast MAC."""
    b = bytearray(raw[:6])
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def as_secret(raw: bytes) -> str:
    """Sixteen derived bytes as a stable_secret value (IPv6 address syntax)."""
    return ipaddress.IPv6Address(raw[:16]).exploded


def key_id(key: bytes) -> str:
    """A short public fingerprint of the host key, kept in workload state: a workload made
    with another key (the key file was lost and re-created) shows by a different id."""
    return derive(key, "key_id", "").hex()[:16]


def stable_secret(key: bytes, name: str) -> str:
    """The value for net.ipv6.conf.IF.stable_secret: 128 bits in IPv6 address syntax."""
    check_name(name)
    return as_secret(derive(key, "stable_secret", name))


def stable_mac(key: bytes, name: str) -> str:
    """A locally administered unicast MAC, so neighbour caches stay right across restarts."""
    check_name(name)
    return as_mac(derive(key, "mac", name))


def _sha1_block(block: bytes) -> list[int]:
    """SHA-1's compression function on one 64-byte block from the standard IV (no padding):
    what the kernel's stable-privacy generator runs, which is not a SHA-1 digest."""

    def rol(x: int, n: int) -> int:
        return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF

    h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
    w = list(struct.unpack(">16I", block))
    for i in range(16, 80):
        w.append(rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1))
    a, b, c, d, e = h
    for i in range(80):
        if i < 20:
            f, k = (b & c) | (~b & d), 0x5A827999
        elif i < 40:
            f, k = b ^ c ^ d, 0x6ED9EBA1
        elif i < 60:
            f, k = (b & c) | (b & d) | (c & d), 0x8F1BBCDC
        else:
            f, k = b ^ c ^ d, 0xCA62C1D6
        a, b, c, d, e = (rol(a, 5) + f + e + k + w[i]) & 0xFFFFFFFF, a, rol(b, 30), c, d
    return [(x + y) & 0xFFFFFFFF for x, y in zip(h, (a, b, c, d, e), strict=True)]


def stable_privacy_address(secret: str, prefix: str, dad_count: int = 0) -> ipaddress.IPv6Address:
    """The address Linux's addr_gen_mode 2 gives a netmux link in /64 `prefix` (RFC 7217 as
    the kernel implements it: secret, prefix, the permanent MAC (all zeros on a macvlan or
    macvtap made with an address) and the DAD counter in one SHA-1 block). Pure: lets tests
    pin a workload's addresses without a kernel; tests/netns/test_names_kernel.py checks it
    against the real kernel."""
    net = ipaddress.IPv6Network(prefix, strict=False)
    head = net.network_address.packed[:8]
    for count in range(dad_count, 256):  # the kernel skips RFC 5453's reserved identifiers
        block = ipaddress.IPv6Address(secret).packed + head + bytes(32) + bytes([count])
        digest = _sha1_block(block.ljust(64, b"\0"))
        iid = struct.pack("<2I", digest[0], digest[1])
        if not _reserved_iid(iid):
            return ipaddress.IPv6Address(head + iid)
    raise ValueError("no usable interface identifier")  # pragma: no cover - 2^-64 per try


def _reserved_iid(iid: bytes) -> bool:
    """RFC 5453 interface identifiers the kernel skips (ipv6_reserved_interfaceid)."""
    if iid == bytes(8):
        return True
    if iid[:5] == bytes.fromhex("02005efffe"):
        return True
    return iid[:7] == bytes.fromhex("fdffffffffffff") and iid[7] >= 0x80
