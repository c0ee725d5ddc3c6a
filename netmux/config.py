"""Configuration: /etc/netmux/netmux.toml (the host) and /etc/netmux/workloads/NAME.toml.

Pure: nothing here touches the system beyond reading the files it is given. Every value is
checked when it is loaded, and an error names the file, the key, the bad value and what is
allowed. A missing host file means the defaults, which reproduce the original design.

The loader is generic over frozen dataclasses: a section is a dataclass whose fields are
the keys, typed with one of the types in `_CONVERTERS` (or a Literal, or a tuple of them),
and optionally a `check` in the field's metadata. Later features add a section by adding a
dataclass and a field on HostConfig.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import ipaddress
import math
import os
import re
import shlex
import socket
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path
from typing import Any, Literal

from . import names
from .errors import ConfigError

# What `netmux up` waits for: a global address and a default route ("global"), a ULA
# address only ("ula"), or nothing ("none"). The one list of the choices.
Wait = Literal["global", "ula", "none"]
WAIT_CHOICES: tuple[str, ...] = typing.get_args(Wait)
Link = Literal["macvlan", "routed"]
LINK_CHOICES: tuple[str, ...] = typing.get_args(Link)

DEFAULT_CONFIG = Path("/etc/netmux/netmux.toml")
CONFIG_ENV = "NETMUX_CONFIG"

IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
IFNAME_ALLOWED = "an interface name: 1-15 characters of letters, digits, '_', '.', '-'"
LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
DOMAIN_ALLOWED = "a DNS name: dot-separated labels of a-z, 0-9, '-' (each 1-63, total ≤ 253)"


# --- checks ------------------------------------------------------------------------------
# A check returns None if the value is fine, else a sentence saying what is allowed.


def _ifname(v: str) -> str | None:
    return None if IFNAME_RE.fullmatch(v) and v not in (".", "..") else IFNAME_ALLOWED


def _ifname_or_empty(v: str) -> str | None:
    return None if v == "" else _ifname(v)


# Names a workload's link may not take: the namespace's own loopback (a macvlan named "lo"
# can never be created, and a rollback would try to delete the loopback).
RESERVED_IFNAMES = frozenset({"lo"})


def _workload_ifname(v: str) -> str | None:
    if v in RESERVED_IFNAMES:
        return "an interface name other than " + ", ".join(sorted(RESERVED_IFNAMES))
    return _ifname(v)


def _ifpattern(v: str) -> str | None:
    ok = re.fullmatch(r"[A-Za-z0-9_.*?\[\]-]{1,15}", v)
    return None if ok else "a shell-style interface pattern such as 'enp*' (≤ 15 characters)"


def _domain(v: str) -> str | None:
    v = v.rstrip(".")
    if v and len(v) <= 253 and all(LABEL_RE.fullmatch(lab) for lab in v.split(".")):
        return None
    return DOMAIN_ALLOWED


def _label(v: str) -> str | None:
    return None if LABEL_RE.fullmatch(v) else "one DNS label: 1-63 characters of a-z, 0-9, '-'"


def _label_or_empty(v: str) -> str | None:
    """A label, or "" for "derive it" (the default must be writable in the file too)."""
    return None if v == "" else _label(v)


def _ula64(v: IPv6Interface) -> str | None:
    if v.network.prefixlen == 64 and v.ip in IPv6Network("fc00::/7"):
        return None
    return "an address in a ULA /64 (fc00::/7), with its /64, such as fd64:cafe::1/64"


def _nat64_prefix(v: IPv6Network) -> str | None:
    if v.prefixlen in (32, 40, 48, 56, 64, 96):
        return None
    return "an IPv6 prefix of length 32, 40, 48, 56, 64 or 96 (RFC 6052)"


def _positive(v: float) -> str | None:
    return None if v > 0 else "a number greater than 0"


def _sla_id(v: int) -> str | None:
    return None if 0 <= v <= 0xFFFF else "an SLA id 0-65535"


def _port_number(v: int) -> str | None:
    return None if 0 < v < 65536 else "a port number 1-65535"


def _absolute(v: Path) -> str | None:
    return None if v.is_absolute() else "an absolute path"


def check(fn: Callable[[Any], str | None], default: Any) -> Any:
    """A dataclass field with a default and a check."""
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata={"check": fn})


# --- sections ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MuxConfig:
    """The mux namespace: where the uplinks live and the prefix is advertised."""

    netns: str = check(_ifname, "mux")
    parent: str = check(_ifname, "host0")
    parent_kind: Literal["auto", "dummy", "veth", "bridge"] = "auto"
    gateway: str = check(_ifname, "gw0")
    ula: IPv6Interface = check(_ula64, IPv6Interface("fd64:cafe::1/64"))
    uplinks: tuple[str, ...] = check(_ifpattern, ("enp*", "eth*"))
    # A macvlan for the host's own services in the root namespace ("" = none).
    root_link: str = check(_ifname_or_empty, "")
    # Global addresses put on the gateway by `mux up`, for a host with a routed static
    # prefix (no DHCPv6-PD) and for the lab: e.g. ["2001:db8:0:1::1/64"].
    static_addresses: tuple[IPv6Interface, ...] = ()


@dataclass(frozen=True)
class WorkloadDefaults:
    """Defaults for every workload; a workload file or the command line can override some."""

    ifname: str = check(_workload_ifname, "eth0")
    # What `netmux up` waits for before it reports ready: a global address and a default
    # route ("global"), a ULA address only ("ula"), or nothing ("none").
    wait: Wait = "global"
    # The workload's link: a macvlan on the shared segment ("macvlan"), or a veth to mux
    # that is its own ("routed": nothing it sends reaches a neighbour's link, even as root;
    # see docs/operations.md, "Security between neighbours"). VMs always use a macvtap.
    link: Link = "macvlan"
    timeout: float = check(_positive, 10.0)
    optimistic_dad: bool = True
    # The neighbour retransmit timer (also paces DAD and router solicitations).
    retrans_time_ms: int = check(_positive, 100)
    # The retransmit timer while `netmux up` starts a workload, so its DAD (one probe) ends
    # after this long and the address is published sooner; retrans_time_ms afterwards.
    start_retrans_time_ms: int = check(_positive, 20)
    # Seconds `down` gives a workload's processes between SIGTERM and SIGKILL.
    stop_grace: float = check(_positive, 5.0)


@dataclass(frozen=True)
class DnsConfig:
    """Names: NAME.internal. for ULA addresses, NAME.HOSTNAME.DOMAIN. for global ones."""

    hostname: str = check(_label_or_empty, "")  # "" = this host's short name, lower-cased
    domain: str = check(_domain, "home.arpa")
    internal_zone: str = check(_domain, "internal")
    ttl: int = check(_positive, 60)


@dataclass(frozen=True)
class Nat64Config:
    """NAT64 in mux (tayga or Jool): IPv6 clients reach IPv4-only hosts through `prefix`."""

    enabled: bool = True
    # Which translator runs: "auto" = Jool where its kernel module is loaded or loadable
    # and jool-tools is installed, tayga otherwise (`netmux doctor` says which and why).
    engine: Literal["auto", "tayga", "jool"] = "auto"
    prefix: IPv6Network = check(_nat64_prefix, IPv6Network("64:ff9b::/96"))
    pool: IPv4Network = IPv4Network("240.0.0.0/4")
    # Used instead of `pool` when the installed tayga refuses it (0.9.2 rejects class E
    # 240.0.0.0/4 as "reserved"): the benchmarking block, unused on real networks.
    fallback_pool: IPv4Network = IPv4Network("198.18.0.0/15")
    tun: str = check(_ifname, "nat64")


def _stub(v: str) -> str | None:
    zone, _, addrs = v.partition("=")
    try:
        ok = not _domain(zone) and all(ipaddress.ip_address(a) for a in addrs.split(","))
    except ValueError:
        ok = False
    return None if ok and addrs else "ZONE=ADDRESS[,ADDRESS...] such as lab.test=2001:db8::53"


@dataclass(frozen=True)
class ResolverConfig:
    """unbound with DNS64 in the resolver workload (render/unbound.py)."""

    address: IPv6Address = IPv6Address("fd64:cafe::53")
    # Where the host's own zones (internal. and HOSTNAME.DOMAIN., plus the reverse zones)
    # are served: the phonebook's Knot. Empty: phonebook.server when that is set.
    zone_servers: tuple[IPv6Address, ...] = ()
    # More stub zones, e.g. a test zone of the lab's router: "lab.test=2001:db8::53".
    stubs: tuple[str, ...] = check(_stub, ())
    # Forward everything else to these resolvers (the home router); empty: recurse.
    forwarders: tuple[IPv6Address, ...] = ()


def _ra_lifetime(v: int) -> str | None:
    return None if 1 <= v <= 0xFFFFFFFE else "seconds, 1 to 4294967294 (such as 2700)"


@dataclass(frozen=True)
class UplinkConfig:
    """dhcpcd on the uplinks in mux: DHCPv6-PD onto the gateway (render/dhcpcd.py)."""

    # IAID of the prefix delegation, and which /64 of the delegation goes on the gateway.
    pd_iaid: int = check(_positive, 1)
    pd_sla_id: int = check(_sla_id, 0)
    # DHCPv4 on the uplinks: "auto" = when NAT64 is enabled (it masquerades behind it).
    dhcpv4: Literal["auto", "on", "off"] = "auto"
    # dhcpcd's `script`: "" = the netmux hook written next to the rendered dhcpcd.conf.
    hook: str = ""
    # The delegated prefix is advertised on the gateway with its remaining lease lifetimes,
    # capped at these (RFC 9096 ND_PREFERRED_LIMIT / ND_VALID_LIMIT, in seconds): after a
    # renumbering nobody announced, workloads stop preferring the dead prefix within
    # `ra_preferred_limit`. A preferred limit above the valid one is cut to it.
    ra_preferred_limit: int = check(_ra_lifetime, 2700)
    # The cap on the advertised valid lifetime (seconds; RFC 9096 ND_VALID_LIMIT).
    ra_valid_limit: int = check(_ra_lifetime, 5400)


def _ip_address(v: str) -> str | None:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(v)
        return None
    return "an IP address such as 2001:db8::53 or 127.0.0.1 (empty: none)" if v else None


@dataclass(frozen=True)
class PhonebookConfig:
    """phonebookd: where the records go (sinks) and how it is reached."""

    # The publish socket: a client sends "NAME IFNAME\n" and keeps it open.
    socket: Path = check(_absolute, Path("/run/phonebook/publish"))
    sinks: tuple[Literal["tinydns", "rfc2136"], ...] = ("tinydns",)
    # tinydns: the directory holding `data` and `data.cdb`; tinydns-data runs there.
    tinydns_dir: Path = check(_absolute, Path("/var/lib/netmux/tinydns"))
    tinydns_data: Path = check(_absolute, Path("/usr/sbin/tinydns-data"))
    # SIGHUP goes to the process in this pidfile after each rebuild (e.g. shibari); "" = none.
    # phonebookd.service has no CAP_KILL: for a server running as another user, add
    # `CapabilityBoundingSet=CAP_KILL` in a drop-in.
    sighup_pidfile: str = ""
    # At most one rebuild per this many seconds, however many changes arrive.
    rebuild_interval: float = check(_positive, 1.0)
    # RFC 2136: the authoritative server (Knot DNS in netmux@dns) and its TSIG key file
    # (Knot's `key:` YAML, as written by `python -m netmux.phonebook.knot`).
    server: str = check(_ip_address, "")
    server_port: int = check(_port_number, 53)
    tsig_key: Path = check(_absolute, Path("/etc/netmux/phonebook.key"))
    # The name server label: NS and SOA point at LABEL.HOSTNAME.DOMAIN. (the dns workload).
    ns_label: str = check(_label, "dns")
    # Prefixes whose reverse zones this host serves (PTR records); mux.ula is always one.
    reverse: tuple[IPv6Network, ...] = ()
    # Drop a record when the systemd unit that published it stops (besides its lifeline).
    watch_units: bool = True
    # Besides root, members of this group may publish (publish socket; D-Bus: the policy file).
    group: str = check(_label, "netmux")
    # Each user but root may hold at most this many publications at once.
    user_publications: int = check(_positive, 16)
    # ... and make phonebookd hold at most this many file descriptors for it (lifelines
    # plus publish-socket connections that have not sent their line yet).
    user_connections: int = check(_positive, 64)


def _domain_or_empty(v: str) -> str | None:
    return _domain(v) if v else None


@dataclass(frozen=True)
class DelegationConfig:
    """NS + glue for HOSTNAME.DOMAIN in the parent zone, following the DNS workload.

    RFC 2136 updates signed with TSIG keep the glue on the DNS workload's global address
    across renumberings (delegation.py, docs/renumbering.md).
    """

    # The parent zone's primary server, where updates go ("" = no delegation updates).
    server: str = check(_ip_address, "")
    # Port of the parent's server.
    port: int = check(_port_number, 53)
    # The parent zone ("" = dns.domain): it must contain HOSTNAME.DOMAIN.
    zone: str = check(_domain_or_empty, "")
    # The TSIG key the parent accepts updates with (a Knot `key:` file: id, algorithm,
    # secret; `tsig-keygen` output converts line for line).
    tsig_key: Path = check(_absolute, Path("/etc/netmux/delegation.key"))
    # TTL of the NS and glue records in the parent.
    ttl: int = check(_positive, 300)


def _address_or_name(v: str) -> str | None:
    if not v or _ip_address(v) is None or _domain(v) is None:
        return None
    return "an IP address such as 2001:db8::53, or a name such as dns.a.example.org"


@dataclass(frozen=True)
class HostsConfig:
    """More than one netmux host under one domain (netmux/hosts.py, docs/hosts.md).

    The primary (always on) serves every joined host's zone HOST.DOMAIN in its Knot and a
    catalog zone (RFC 9432) listing them for off-site secondaries; a member sends its records
    there by RFC 2136 with a TSIG key that may change its own zone only, on a lease.
    """

    # "" = a single host; "primary" serves the zones of every joined host; "member" sends its
    # public records to the primary.
    role: Literal["", "primary", "member"] = ""
    # member: the primary's Knot, where updates and lease refreshes go: an address, or a
    # name (such as dns.a.example.org) looked up again at every refresh, so that a member
    # follows the primary across renumberings (its delegation glue follows it).
    primary: str = check(_address_or_name, "")
    # Port of the primary's Knot.
    port: int = check(_port_number, 53)
    # member: the TSIG key the primary issued for this host (`netmux host add` there,
    # installed here by `netmux host join FILE`).
    key: Path = check(_absolute, Path("/etc/netmux/host.key"))
    # Seconds a refresh keeps a member's records: it refreshes every lease/4, and the
    # primary's `netmux host expire` removes a zone's records once its lease is older.
    lease: float = check(_positive, 120.0)
    # primary: the joined hosts' key files and the generated Knot part (hosts.conf).
    directory: Path = check(_absolute, Path("/var/lib/netmux/hosts"))
    # The catalog zone listing the owner's zones (never delegated: a name under .invalid).
    catalog: str = check(_domain, "catalog.netmux.invalid")
    # primary: off-site Knot secondaries (NOTIFY to them, transfers signed with the
    # secondary key in hosts.directory).
    secondaries: tuple[IPv6Address, ...] = ()
    # primary: the secondaries' name server names (FQDNs). Every zone's apex NS set is kept
    # at the primary's name server plus these, as the public delegation lists them, so a
    # resolver still reaches the secondary while the primary is down.
    secondary_ns: tuple[str, ...] = check(_domain, ())
    # The other hosts' names: the resolver workload answers PEER.DOMAIN from the primary
    # (stub zones), while this host's own zone stays served by its own Knot.
    peers: tuple[str, ...] = check(_label, ())


def _prefix64(v: IPv6Network) -> str | None:
    return None if v.prefixlen == 64 else "a /64 prefix such as 2001:db8:0:1::/64"


@dataclass(frozen=True)
class LabConfig:
    """`netmux lab`: a simulated home router upstream of mux (documentation addresses).

    The lab makes a veth pair: `uplink` is created in the root namespace with a NIC-like
    name, so it must match mux.uplinks and is adopted into mux like a real NIC; its peer
    `router_link` lives in the router namespace.
    """

    router_netns: str = check(_ifname, "labrouter")
    uplink: str = check(_ifname, "labup0")
    router_link: str = check(_ifname, "lan0")
    # The router's own address on the link to mux: what workloads ping "upstream".
    router_address: IPv6Interface = IPv6Interface("2001:db8::1/64")
    # The /64 put on mux's gateway and advertised (static until DHCPv6-PD arrives).
    prefix: IPv6Network = check(_prefix64, IPv6Network("2001:db8:0:1::/64"))
    # The preferred lifetime kea gives the delegation (seconds); above the
    # uplink.ra_preferred_limit cap by default, shorter to test lease-bound lifetimes.
    pd_preferred_lifetime: int = check(_positive, 7200)
    # The valid lifetime kea gives the delegation (seconds).
    pd_valid_lifetime: int = check(_positive, 14400)


def _prefix_length(v: int) -> str | None:
    return None if 8 <= v <= 128 else "a prefix length 8-128, such as 64 or 48"


def _group(v: str) -> str | None:
    ok = re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}", v)
    return None if ok else "a group name or a numeric group id"


@dataclass(frozen=True)
class FirewallConfig:
    """Per-workload inbound firewall (nftables, applied before the link comes up)."""

    enabled: bool = True
    # Accept ICMPv6 echo-request (ping) besides what IPv6 itself needs.
    echo: bool = True


def _aggregate_length(v: int) -> str | None:
    return None if v == 0 or 16 <= v <= 120 else "0 (off) or a prefix length from 16 to 120"


@dataclass(frozen=True)
class DenyConfig:
    """mux's guard table: the source-prefix denylist and automatic flood denial."""

    # Automatic denial: a source prefix of this length sending more than `rate` packets
    # (or new connections) per second, after `burst`, is dropped for `timeout` seconds.
    auto: bool = True
    prefix_length: int = check(_prefix_length, 64)
    rate: int = check(_positive, 1000)
    burst: int = check(_positive, 1000)
    count: Literal["packets", "connections"] = "packets"
    timeout: float = check(_positive, 600.0)
    # The same per source prefix of this length (a site: many /64s flooding together, or
    # filling the per-prefix meter); 0 (or not shorter than prefix_length) = off.
    aggregate_length: int = check(_aggregate_length, 48)
    # Packets per second (and in a burst) one aggregate prefix may send.
    aggregate_rate: int = check(_positive, 4000)
    # `netmux deny log` (run by a timer) writes the size to the journal this often.
    log_interval: float = check(_positive, 300.0)


@dataclass(frozen=True)
class IpmuxConfig:
    """ipmuxd: devices on demand for unprivileged callers, guarded by socket permissions."""

    socket: Path = check(_absolute, Path("/run/netmux/ipmuxd.sock"))
    group: str = check(_group, "netmux")
    # Devices one user may hold at once.
    quota: int = check(_positive, 4)
    # Kinds of device a caller other than root may ask for. "routed" is its own link; the
    # others put it on the shared segment, where a caller (root in its user namespace)
    # reaches its siblings' links: ["routed"] stops that (docs/operations.md).
    kinds: tuple[Literal["routed", "macvlan", "macvtap", "ipvlan"], ...] = (
        "routed",
        "macvlan",
        "macvtap",
        "ipvlan",
    )


@dataclass(frozen=True)
class PathsConfig:
    state_dir: Path = check(_absolute, Path("/var/lib/netmux"))
    run_dir: Path = check(_absolute, Path("/run/netmux"))
    workloads_dir: Path = check(_absolute, Path("/etc/netmux/workloads"))

    @property
    def host_key(self) -> Path:
        return self.state_dir / "host.key"


@dataclass(frozen=True)
class HostConfig:
    """Everything in netmux.toml. `source` is the file it came from (for messages)."""

    mux: MuxConfig = field(default_factory=MuxConfig)
    workload: WorkloadDefaults = field(default_factory=WorkloadDefaults)
    dns: DnsConfig = field(default_factory=DnsConfig)
    nat64: Nat64Config = field(default_factory=Nat64Config)
    resolver: ResolverConfig = field(default_factory=ResolverConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    phonebook: PhonebookConfig = field(default_factory=PhonebookConfig)
    delegation: DelegationConfig = field(default_factory=DelegationConfig)
    hosts: HostsConfig = field(default_factory=HostsConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    deny: DenyConfig = field(default_factory=DenyConfig)
    ipmux: IpmuxConfig = field(default_factory=IpmuxConfig)
    lab: LabConfig = field(default_factory=LabConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    source: str = field(default="(defaults)", compare=False)

    @property
    def hostname(self) -> str:
        return self.dns.hostname or default_hostname()

    @property
    def public_zone(self) -> str:
        """The zone for global addresses: HOSTNAME.DOMAIN (no trailing dot)."""
        return f"{self.hostname}.{self.dns.domain.rstrip('.')}"


def default_hostname() -> str:
    short = socket.gethostname().split(".")[0].lower()
    return short if LABEL_RE.fullmatch(short) else "localhost"


def uplink_matches(cfg: MuxConfig, ifname: str) -> bool:
    return any(fnmatch.fnmatchcase(ifname, pat) for pat in cfg.uplinks)


# --- generic loader ----------------------------------------------------------------------


def _to_bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    raise TypeError("true or false")


def _to_str(v: object) -> str:
    if isinstance(v, str) and "\0" not in v and "\n" not in v:
        return v
    raise TypeError("a string (one line)")


def _to_int(v: object) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise TypeError("an integer")


def _to_float(v: object) -> float:
    """Every float setting is a finite number: nan and inf break every timer they reach."""
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise TypeError("a number (finite: not nan or inf)")


def _ip(ctor: Callable[[str], Any], what: str) -> Callable[[object], Any]:
    def convert(v: object) -> Any:
        if not isinstance(v, str):
            raise TypeError(what)
        try:
            return ctor(v)
        except ValueError:
            raise TypeError(what) from None

    return convert


_CONVERTERS: dict[Any, Callable[[object], Any]] = {
    bool: _to_bool,
    str: _to_str,
    int: _to_int,
    float: _to_float,
    Path: lambda v: Path(_to_str(v)),
    IPv6Address: _ip(IPv6Address, "an IPv6 address such as fd64:cafe::53"),
    IPv6Interface: _ip(
        IPv6Interface, "an IPv6 address with prefix length, such as fd64:cafe::1/64"
    ),
    IPv6Network: _ip(
        lambda s: IPv6Network(s, strict=True),
        "an IPv6 prefix with host bits clear, such as 64:ff9b::/96",
    ),
    IPv4Network: _ip(
        lambda s: IPv4Network(s, strict=True),
        "an IPv4 prefix with host bits clear, such as 192.0.2.0/24",
    ),
}


def _convert(tp: Any, value: object) -> Any:
    """Convert a TOML value to `tp`; TypeError(allowed) when it does not fit."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        raise TypeError("one of " + ", ".join(repr(c) for c in choices))
    if origin is tuple:
        (item,) = (a for a in typing.get_args(tp) if a is not Ellipsis)
        if not isinstance(value, list):
            raise TypeError("a list")
        return tuple(_convert(item, v) for v in value)
    return _CONVERTERS[tp](value)


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """cls's field types, resolved once per class (get_type_hints evaluates every string
    annotation anew: ~1 ms a config load otherwise)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def resolve_hints() -> None:
    """Resolve the field types of every config dataclass now: the warm launcher calls it,
    so its forks never do (a config that names only some tables would leave the rest)."""
    todo: list[type[Any]] = [HostConfig, WorkloadConfig]
    while todo:
        for tp in _hints(todo.pop()).values():
            for t in (tp, *typing.get_args(tp)):
                if isinstance(t, type) and dataclasses.is_dataclass(t) and t not in _HINTS:
                    todo.append(t)


def build(cls: type[Any], table: Mapping[str, object], source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a TOML table, checking every key. Pure."""
    if not isinstance(table, Mapping):
        raise ConfigError(source, prefix.rstrip("."), table, "a table")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "source"}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(
            source, prefix + unknown[0], table[unknown[0]], "known keys: " + ", ".join(fields)
        )
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        f = fields[key]
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, source, f"{prefix}{key}.")  # type: ignore[arg-type]
            continue
        try:
            conv = _convert(tp, value)
        except TypeError as e:
            raise ConfigError(source, prefix + key, value, f"expected {e}") from None
        chk = f.metadata.get("check")
        if chk:
            for item in conv if isinstance(conv, tuple) else (conv,):
                problem = chk(item)
                if problem:
                    raise ConfigError(source, prefix + key, _plain(item), f"expected {problem}")
        kwargs[key] = conv
    return cls(**kwargs)


def _plain(v: object) -> object:
    return str(v) if isinstance(v, Path | IPv6Address | IPv6Interface | IPv6Network) else v


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), "", "(file)", f"expected valid TOML ({e})") from None
    except PermissionError:
        raise ConfigError(str(path), "", "(file)", "expected a readable file") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "", "(file)", "expected a file, not a directory") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            str(path), "", "(file)", f"expected UTF-8 text (byte {e.start} is not)"
        ) from None


def parse_host(text: str, source: str = "(string)") -> HostConfig:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "", "(file)", f"expected valid TOML ({e})") from None
    cfg: HostConfig = build(HostConfig, table, source)
    return dataclasses.replace(cfg, source=source)


def config_path(arg: str | os.PathLike[str] | None = None) -> Path:
    """--config, else $NETMUX_CONFIG, else /etc/netmux/netmux.toml."""
    if arg:
        return Path(arg)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG


def load_host(path: Path | None = None) -> HostConfig:
    """Load the host config. A missing file means defaults, unless it was named explicitly."""
    explicit = path is not None or CONFIG_ENV in os.environ
    path = config_path(path)
    if not path.exists():
        if explicit and path != DEFAULT_CONFIG:
            raise ConfigError(str(path), "", "(file)", "expected an existing file")
        return HostConfig(source=f"{path} (missing: defaults)")
    table = _read_toml(path)
    cfg: HostConfig = build(HostConfig, table, str(path))
    return dataclasses.replace(cfg, source=str(path) if table else f"{path} (empty: defaults)")


def defaults_note(cfg: HostConfig) -> str | None:
    """What to say (once, at info level) when the host file gave nothing: missing or empty."""
    if cfg.source.endswith(("(missing: defaults)", "(empty: defaults)")):
        return f"host configuration {cfg.source}: every setting is its default"
    return None


# --- workloads ---------------------------------------------------------------------------

PORT_RE = re.compile(r"^(tcp|udp|sctp)/([0-9]{1,5})(?:-([0-9]{1,5}))?$")
PORT_ALLOWED = "PROTO/PORT or PROTO/FIRST-LAST with PROTO tcp, udp or sctp, ports 1-65535"


@dataclass(frozen=True, order=True)
class Port:
    proto: Literal["tcp", "udp", "sctp"]
    first: int
    last: int

    def __str__(self) -> str:
        rng = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.proto}/{rng}"


def parse_port(spec: str) -> Port:
    """'tcp/80' or 'udp/6000-6010' -> Port; ValueError(allowed) otherwise."""
    m = PORT_RE.fullmatch(spec.strip().lower()) if isinstance(spec, str) else None
    if not m:
        raise ValueError(PORT_ALLOWED)
    first = int(m.group(2))
    last = int(m.group(3) or first)
    if not (0 < first <= last < 65536):
        raise ValueError(PORT_ALLOWED)
    return Port(m.group(1), first, last)  # type: ignore[arg-type]


@dataclass(frozen=True)
class WorkloadConfig:
    """One workload. Built from its file, then NETMUX_* environment, then the command line."""

    name: str
    command: tuple[str, ...] = ()
    user: str = ""
    group: str = ""
    kind: Literal["process", "vm"] = "process"
    ports: tuple[Port, ...] = ()
    # Static addresses added besides SLAAC, e.g. fd64:cafe::53/64 for the resolver.
    addresses: tuple[IPv6Interface, ...] = ()
    # Extra DNS labels published besides NAME.
    dns_names: tuple[str, ...] = ()
    publish: bool = True
    wait: Wait | None = None
    # "macvlan" or "routed" (a veth of its own to mux); default: workload.link.
    link: Link | None = None
    timeout: float | None = None
    # Keep CAP_SYS_ADMIN for the command (netmux/become.py says why it is dropped).
    sys_admin: bool = False


_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$|^[0-9]{1,10}$")


class _Bad(ValueError):
    """A workload value that is not allowed: what is (and the item at fault, if one)."""

    def __init__(self, allowed: str, item: object = None) -> None:
        super().__init__(allowed)
        self.allowed, self.item = allowed, item


def _command(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as e:
            raise _Bad(f"a command line that shell-splits ({e})") from None
    if not isinstance(value, list | tuple) or not all(isinstance(a, str) for a in value):
        raise _Bad("a list of strings or one command-line string")
    if any("\0" in a for a in value):
        raise _Bad("arguments without NUL bytes")
    return tuple(value)


def _account(value: object) -> str:
    if not isinstance(value, str) or not (value == "" or _USER_RE.fullmatch(value)):
        raise _Bad("a user or group name or a numeric id")
    return value


def _one_of(*choices: str) -> Callable[[object], str]:
    allowed = " or ".join(", ".join(f"'{c}'" for c in choices).rsplit(", ", 1))

    def parse(value: object) -> str:
        if value not in choices:
            raise _Bad(allowed)
        return str(value)

    return parse


def _seconds(value: object) -> float:
    try:
        t = _to_float(value)
    except TypeError:
        t = 0.0
    if t <= 0:
        raise _Bad("a finite number of seconds greater than 0")
    return t


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad("true or false")
    return value


def _items(value: object) -> list[str]:
    items = _as_list(value)
    if items is None:
        raise _Bad("a list of strings (or one space-separated string)")
    return items


def _ports(value: object) -> tuple[Port, ...]:
    ports = []
    for item in _items(value):
        try:
            ports.append(parse_port(item))
        except ValueError:
            raise _Bad(PORT_ALLOWED, item) from None
    return tuple(sorted(set(ports)))


def _addresses(value: object) -> tuple[IPv6Interface, ...]:
    addrs = []
    for item in _items(value):
        try:
            addrs.append(IPv6Interface(item if "/" in item else item + "/64"))
        except ValueError:
            raise _Bad(
                "IPv6 addresses with prefix length, such as fd64:cafe::53/64", item
            ) from None
    return tuple(addrs)


def _labels(value: object) -> tuple[str, ...]:
    items = _items(value)
    for item in items:
        if _label(item):
            raise _Bad("DNS labels: 1-63 characters of a-z, 0-9, '-'", item)
    return tuple(items)


def _env_bool(text: str) -> object:
    return _ENV_BOOL.get(text.lower(), text)


def _env_number(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Setting:
    """One workload key: the key of NAME.toml, the variable NETMUX_KEY and the field of
    WorkloadConfig, and with `flag` an option of `netmux up` and `netmux run` (argparse
    keywords in `cli`). `parse` checks and converts a value from any of them (raising
    _Bad); `env` turns the variable's text into such a value. `help` is the key's line in
    docs/configuration.md (docs/configdoc.py)."""

    key: str
    parse: Callable[[object], Any]
    help: str
    flag: str = ""
    cli: Mapping[str, Any] = field(default_factory=dict)
    env: Callable[[str], object] = str


# The workload settings, in the order the documentation lists them: add a key here (and
# its field in WorkloadConfig) and the file, the environment, the command line and the
# documentation all know it.
WORKLOAD_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "command", _command, "The command the workload runs (a list, or one shell-split string)."
    ),
    Setting(
        "user",
        _account,
        "Run the command as this user (name or uid).",
        "--user",
        {"help": "run CMD as this user"},
    ),
    Setting("group", _account, "Run the command as this group (name or gid)."),
    Setting(
        "kind",
        _one_of("process", "vm"),
        "`process` gets a macvlan; `vm` gets a macvtap "
        "(allmulticast) whose fd replaces `{tapfd}` and whose MAC replaces `{mac}` in the "
        "command.",
        "--vm",
        {"action": "store_const", "const": "vm", "help": "a macvtap for QEMU instead of a macvlan"},
    ),
    Setting(
        "ports",
        _ports,
        "Inbound ports the firewall opens: PROTO/PORT or PROTO/FIRST-LAST.",
        "--port",
        {"action": "append", "metavar": "PROTO/PORT", "help": "e.g. tcp/80"},
    ),
    Setting(
        "addresses",
        _addresses,
        "Static addresses added besides SLAAC, e.g. fd64:cafe::53/64 for the resolver.",
        "--address",
        {"action": "append", "metavar": "ADDR/LEN", "help": "static address"},
    ),
    Setting("dns_names", _labels, "Extra DNS labels published besides NAME."),
    Setting(
        "publish", _bool, "Publish the workload's addresses in DNS while it runs.", env=_env_bool
    ),
    Setting(
        "wait",
        _one_of(*WAIT_CHOICES),
        "What `netmux up` waits for: `global`, `ula` or `none` (default: workload.wait).",
        "--wait",
        {"choices": WAIT_CHOICES, "help": "what to wait for (workload.wait)"},
    ),
    Setting(
        "link",
        _one_of(*LINK_CHOICES),
        "`macvlan` (the shared segment) or `routed` (a veth of its own to mux; "
        'docs/operations.md, "Security between neighbours"); default: workload.link.',
        "--link",
        {"choices": LINK_CHOICES, "help": "the workload's link (workload.link)"},
    ),
    Setting(
        "timeout",
        _seconds,
        "Seconds to wait for it (default: workload.timeout).",
        "--timeout",
        {"type": float, "help": "seconds to wait for a usable address"},
        env=_env_number,
    ),
    Setting(
        "sys_admin",
        _bool,
        "Let the command keep CAP_SYS_ADMIN (mounts, entering namespaces). Off: root in the "
        "workload can neither remount its unit's read-only /proc/sys, /sys and /usr "
        "writable nor enter another workload's namespace.",
        env=_env_bool,
    ),
)
SETTINGS = {s.key: s for s in WORKLOAD_SETTINGS}
WORKLOAD_KEYS = tuple(SETTINGS)


def _workload_value(key: str, value: object, source: str) -> Any:
    """Check and convert one workload setting (from a file, the environment or argv)."""
    setting = SETTINGS.get(key)
    if setting is None:
        raise ConfigError(source, key, value, "known keys: " + ", ".join(WORKLOAD_KEYS))
    try:
        return setting.parse(value)
    except _Bad as e:
        shown = value if e.item is None else e.item
        raise ConfigError(source, key, shown, f"expected {e.allowed}") from None


def _as_list(value: object) -> list[str] | None:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


_ENV_BOOL = {"1": True, "yes": True, "true": True, "0": False, "no": False, "false": False}
ENV_KEYS = {f"NETMUX_{k.upper()}": k for k in WORKLOAD_KEYS}
WORKLOAD_FLAGS = tuple(s for s in WORKLOAD_SETTINGS if s.flag)  # options of up and run


def workload_from(
    name: str,
    file_table: Mapping[str, object] | None = None,
    file_source: str = "(workload file)",
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    overrides_source: str = "command line",
) -> WorkloadConfig:
    """Merge a workload's settings: file < NETMUX_* environment < command line. Pure."""
    names.check_name(name)
    values: dict[str, Any] = {}
    for key, value in (file_table or {}).items():
        values[key] = _workload_value(key, value, file_source)
    for var, key in ENV_KEYS.items():
        if env and var in env:
            values[key] = _workload_value(key, SETTINGS[key].env(env[var]), f"environment {var}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        values[key] = _workload_value(key, value, overrides_source)
    return WorkloadConfig(name=name, **values)


def load_workload(
    host: HostConfig,
    name: str,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> WorkloadConfig:
    """Read /etc/netmux/workloads/NAME.toml (if any) and merge env and overrides."""
    names.check_name(name)
    path = host.paths.workloads_dir / f"{name}.toml"
    table = _read_toml(path) if path.exists() else None
    return workload_from(name, table, str(path), env, overrides)


def seconds_arg(text: str, zero: bool = False) -> float:
    """argparse type for a command-line duration: a finite number greater than 0 (or
    also 0 with `zero`)."""
    import argparse

    try:
        v = _to_float(float(text))
    except (TypeError, ValueError):
        v = -1.0
    if v < 0 or (v == 0 and not zero):
        least = ">= 0" if zero else "> 0"
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number of seconds {least}")
    return v


def seconds_or_zero_arg(text: str) -> float:
    """argparse type: a finite number of seconds, 0 or more."""
    return seconds_arg(text, zero=True)


def effective_wait(host: HostConfig, wl: WorkloadConfig) -> str:
    return wl.wait or host.workload.wait


def effective_link(host: HostConfig, wl: WorkloadConfig) -> str:
    """'macvlan' or 'routed' (a VM always has its macvtap on the segment)."""
    return "macvlan" if wl.kind == "vm" else (wl.link or host.workload.link)


def effective_timeout(host: HostConfig, wl: WorkloadConfig) -> float:
    return wl.timeout or host.workload.timeout


__all__ = [
    "DnsConfig",
    "HostConfig",
    "LabConfig",
    "MuxConfig",
    "Nat64Config",
    "PathsConfig",
    "PhonebookConfig",
    "Port",
    "ResolverConfig",
    "UplinkConfig",
    "WorkloadConfig",
    "WorkloadDefaults",
    "build",
    "load_host",
    "load_workload",
    "parse_host",
    "parse_port",
    "workload_from",
]
