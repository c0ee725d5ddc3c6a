"""Which DNS records a published workload gets: pure, and strict about what it lets through.

A publication is a name (a workload name), extra labels (aliases) and the addresses its
interface has right now, with their kernel flags. Only usable addresses are published:
tentative (DAD still running, including optimistic ones), deprecated, DAD-failed and
temporary (privacy) addresses never are. Global IPv6 goes to NAME.HOSTNAME.DOMAIN., ULA
(fc00::/7) to NAME.internal.; IPv4 becomes A records (private ranges in internal, others in
the public zone); PTR records are made for IPv6 addresses inside a reverse prefix this host
serves. Every name is checked here, so nothing unvalidated reaches a sink: records can
only hold lower-case LDH labels, IP address objects and the fixed record types below.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal

from .. import names
from ..config import LABEL_RE, HostConfig, _domain, _label
from ..errors import UsageError
from ..ifaddr import (
    IFA_F_DADFAILED,
    IFA_F_DEPRECATED,
    IFA_F_OPTIMISTIC,
    IFA_F_TEMPORARY,
    IFA_F_TENTATIVE,
)

NOT_USABLE = IFA_F_TENTATIVE | IFA_F_DEPRECATED | IFA_F_DADFAILED | IFA_F_OPTIMISTIC
NOT_PUBLISHED = NOT_USABLE | IFA_F_TEMPORARY

ULA = IPv6Network("fc00::/7")
PRIVATE_V4 = tuple(
    IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)

RType = Literal["SOA", "NS", "A", "AAAA", "PTR"]
IP = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Address:
    """One interface address as the kernel reports it."""

    ip: IP
    prefixlen: int
    flags: int = 0

    @property
    def usable(self) -> bool:
        """Publishable: DAD finished, not deprecated, not a privacy address, not link-local."""
        if self.flags & NOT_PUBLISHED:
            return False
        return not (self.ip.is_link_local or self.ip.is_loopback or self.ip.is_multicast)


def in_dad(a: Address) -> bool:
    """Still in duplicate address detection (tentative or optimistic): published soon."""
    return bool(a.flags & (IFA_F_TENTATIVE | IFA_F_OPTIMISTIC)) and not (
        a.flags & IFA_F_DADFAILED or a.ip.is_link_local
    )


@dataclass(frozen=True)
class Zones:
    """The zones of this host, taken from the host config (validated there and here)."""

    public: str  # HOSTNAME.DOMAIN, no trailing dot
    internal: str
    ttl: int
    ns: str  # the name server's FQDN (no trailing dot)
    reverse: tuple[IPv6Network, ...] = field(default=())

    def __post_init__(self) -> None:
        for zone in (self.public, self.internal, self.ns):
            check_fqdn(zone)
        if not 0 < self.ttl < 2**31:
            raise UsageError(f"TTL {self.ttl!r} is not allowed: 1 to 2147483647 seconds")

    @classmethod
    def from_config(cls, cfg: HostConfig) -> Zones:
        public = cfg.public_zone.lower()
        rev = [cfg.mux.ula.network, *cfg.phonebook.reverse]
        return cls(
            public=public,
            internal=cfg.dns.internal_zone.rstrip(".").lower(),
            ttl=cfg.dns.ttl,
            ns=f"{cfg.phonebook.ns_label}.{public}",
            reverse=tuple(dict.fromkeys(rev)),
        )

    def reverse_zones(self) -> list[str]:
        return [reverse_zone(net) for net in self.reverse]

    def all_zones(self) -> list[str]:
        return [self.public, self.internal, *self.reverse_zones()]

    def host_only_zones(self) -> list[str]:
        """internal. and the reverse zones of ULA prefixes: for the host, never the internet."""
        ula = IPv6Network("fc00::/7")
        return [self.internal] + [reverse_zone(n) for n in self.reverse if n.subnet_of(ula)]

    def zone_of(self, fqdn: str) -> str | None:
        """The longest zone of this host that contains `fqdn` (no trailing dots)."""
        best = None
        for zone in self.all_zones():
            if (fqdn == zone or fqdn.endswith("." + zone)) and (
                best is None or len(zone) > len(best)
            ):
                best = zone
        return best


@dataclass(frozen=True, order=True)
class Record:
    """One resource record. `name` is an FQDN without the trailing dot, lower case.

    `value`: an IPAddress for A/AAAA, an FQDN for NS/PTR, "MNAME RNAME" for SOA. Built only
    through the functions below, and checked again on construction.
    """

    name: str
    rtype: RType
    value: str
    ttl: int

    def __post_init__(self) -> None:
        check_fqdn(self.name)
        if self.rtype in ("A", "AAAA"):
            ctor = IPv4Address if self.rtype == "A" else IPv6Address
            try:
                ok = str(ctor(self.value)) == self.value
            except ValueError:
                ok = False
            if not ok:
                raise UsageError(f"bad {self.rtype} value {self.value!r}")
        elif self.rtype in ("NS", "PTR"):
            check_fqdn(self.value)
        elif self.rtype == "SOA":
            parts = self.value.split(" ")
            if len(parts) != 2:
                raise UsageError(f"bad SOA value {self.value!r}")
            for p in parts:
                check_fqdn(p)
        else:
            raise UsageError(f"record type {self.rtype!r} is not allowed")
        if not 0 < self.ttl < 2**31:
            raise UsageError(f"TTL {self.ttl!r} is not allowed")


FQDN_ALLOWED = "dot-separated labels of a-z, 0-9, '-' (each 1-63, total ≤ 253), no trailing dot"


def check_fqdn(name: str) -> str:
    """Return `name` if it is a plain lower-case LDH domain name (no trailing dot)."""
    if not isinstance(name, str) or name.endswith(".") or _domain(name) is not None:
        raise UsageError(f"DNS name {name!r} is not allowed: {FQDN_ALLOWED}")
    if any(not LABEL_RE.fullmatch(lab) for lab in name.split(".")):
        raise UsageError(f"DNS name {name!r} is not allowed: {FQDN_ALLOWED}")
    return name


def check_label(label: str, what: str = "DNS label") -> str:
    """One DNS label (a workload's extra name, a host's name): UsageError naming `what`."""
    if not isinstance(label, str) or _label(label) is not None:
        raise UsageError(
            f"{what} {label!r} is not allowed: 1-63 characters of a-z, 0-9, '-', "
            "not starting or ending with '-'"
        )
    return label


def check_alias(label: str) -> str:
    """An extra DNS label a workload asks for besides its name."""
    return check_label(label)


def reverse_zone(net: IPv6Network) -> str:
    """The ip6.arpa zone of a prefix (rounded down to a nibble boundary)."""
    nibbles = net.network_address.exploded.replace(":", "")[: net.prefixlen // 4]
    return ".".join(reversed(nibbles)) + ".ip6.arpa" if nibbles else "ip6.arpa"


def ptr_name(ip: IPv6Address) -> str:
    return ip.reverse_pointer


def is_internal(ip: IP) -> bool:
    if isinstance(ip, IPv6Address):
        return ip in ULA
    return any(ip in net for net in PRIVATE_V4)


def names_for(name: str, aliases: Sequence[str], zones: Zones) -> tuple[list[str], list[str]]:
    """(public names, internal names) of a publication, primary name first."""
    names.check_name(name)
    labels = [name, *(check_alias(a) for a in aliases if a != name)]
    labels = list(dict.fromkeys(labels))
    public = [check_fqdn(f"{lab}.{zones.public}") for lab in labels]
    internal = [check_fqdn(f"{lab}.{zones.internal}") for lab in labels]
    return public, internal


def publication_records(
    name: str, aliases: Sequence[str], addresses: Iterable[Address], zones: Zones
) -> list[Record]:
    """The records of one publication: address records for every name, PTR for the first."""
    public, internal = names_for(name, aliases, zones)
    out: set[Record] = set()
    for addr in addresses:
        if not addr.usable:
            continue
        ip = addr.ip
        fqdns = internal if is_internal(ip) else public
        rtype: RType = "AAAA" if isinstance(ip, IPv6Address) else "A"
        for fqdn in fqdns:
            out.add(Record(fqdn, rtype, str(ip), zones.ttl))
        if isinstance(ip, IPv6Address) and any(ip in net for net in zones.reverse):
            out.add(Record(ptr_name(ip), "PTR", fqdns[0], zones.ttl))
    return sorted(out)


def first_ptr_wins(groups: Iterable[Sequence[Record]]) -> list[Record]:
    """The records of publications given in priority order, with each PTR owner name kept
    only from the first publication that has it: an address two publications claim is
    named by one, and a later claimant cannot rename someone else's address."""
    out: list[Record] = []
    owner: dict[str, int] = {}
    for i, recs in enumerate(groups):
        out += [r for r in recs if r.rtype != "PTR" or owner.setdefault(r.name, i) == i]
    return out


def zone_records(zones: Zones) -> list[Record]:
    """SOA and NS for every zone of this host (forward and reverse)."""
    out = []
    for zone in zones.all_zones():
        out.append(Record(zone, "SOA", f"{zones.ns} hostmaster.{zones.public}", zones.ttl))
        out.append(Record(zone, "NS", zones.ns, zones.ttl))
    return out


def parse_address(text: str, prefixlen: int, flags: int = 0) -> Address:
    """An Address from text (for clients and tests); ValueError if it is not one."""
    return Address(ipaddress.ip_address(text), prefixlen, flags)


# --- tinydns-data ------------------------------------------------------------------------

# Debian's tinydns-data has no '3'/'6' lines: AAAA is a generic type-28 record.
SOA_TIMES = "16384:2048:1048576:2560"  # refresh:retry:expire:minimum, tinydns-data's own


def _octal(raw: bytes) -> str:
    return "".join(f"\\{b:03o}" for b in raw)


def tinydns_line(rec: Record) -> str:
    """One tinydns-data line. Fields are checked names and addresses: no ':' or newline."""
    if rec.rtype == "SOA":
        mname, rname = rec.value.split(" ")
        return f"Z{rec.name}:{mname}:{rname}::{SOA_TIMES}:{rec.ttl}"
    if rec.rtype == "NS":
        return f"&{rec.name}::{rec.value}:{rec.ttl}"
    if rec.rtype == "A":
        return f"+{rec.name}:{rec.value}:{rec.ttl}"
    if rec.rtype == "AAAA":
        return f":{rec.name}:28:{_octal(IPv6Address(rec.value).packed)}:{rec.ttl}"
    return f"^{rec.name}:{rec.value}:{rec.ttl}"  # PTR


def render_tinydns(records: Iterable[Record]) -> str:
    """The whole `data` file, sorted, one line per record; refuses anything unsafe."""
    lines = sorted({tinydns_line(r) for r in records})
    text = "".join(line + "\n" for line in lines)
    if not text.isascii() or "\r" in text or "\0" in text:
        raise UsageError("refusing to write a tinydns data file with unsafe characters")
    return text
