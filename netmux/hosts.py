"""More than one netmux host, with DNS itself as the engine (docs/hosts.md).

One always-on host, the primary, runs the authoritative Knot for its own zone HOST.DOMAIN
and for the zone of every joined host. Nothing here is a sync protocol of its own:

- a member's phonebookd sends its public records to the primary by RFC 2136, signed with a
  TSIG key that the primary's Knot lets change that member's zone only (an ACL on that
  zone alone, with `update-owner: zone` and `update-type` as a second fence);
- leases: Knot has none, so the member replaces `_lease.HOST.DOMAIN. TXT "netmux-lease
  t=UNIXTIME lease=SECONDS"` on every refresh (every lease/4), and the primary's
  `netmux host expire` (a systemd timer) deletes the records of a zone whose lease is older
  than min(its lease, hosts.lease) — a switched-off or suspended host's names are gone
  within that bound and come back with its next refresh;
- the primary's Knot generates a catalog zone (RFC 9432, `catalog-role: generate`) with
  every zone as a member, so an off-site Knot secondary (`catalog-role: interpret`) picks
  up a new host's zone by itself, by AXFR/IXFR after NOTIFY.

Pure parts (renderers of the primary's Knot part and the secondary's knot.conf, lease and
expiry decisions, the join file) are unit-tested; `HostSink` and the `netmux host`
commands are the thin edges.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from . import journal
from .config import HostConfig, _label
from .errors import ConfigError, NetmuxError, StateError, UsageError
from .phonebook.records import Zones, check_fqdn
from .phonebook.sinks import Rfc2136Sink, TsigKey, parse_tsig_key, render_tsig_key

KEY_PREFIX = "host-"
SECONDARY_KEY = "netmux-secondary"
SECONDARIES = "netmux-secondaries"  # the remote (NOTIFY) and ACL (transfer) id
LEASE_LABEL = "_lease"
LEASE_TAG = "netmux-lease"
UPDATE_TYPES = ("A", "AAAA", "TXT")
HOSTS_CONF = "hosts.conf"
PRIMARY_KEY_ID = "phonebook"  # netmux.phonebook.knot.KEY_NAME: the primary's own key
JOIN_SUFFIX = ".join"
DEFAULT_KNOT_SOCKET = Path("/var/lib/netmux/knot/run/knot.sock")


# --- names and keys ------------------------------------------------------------------------


def check_host(name: str, source: str = "host name") -> str:
    """A host's name: one DNS label (its zone is NAME.DOMAIN)."""
    if not isinstance(name, str) or _label(name) is not None:
        raise UsageError(
            f"{source} {name!r} is not allowed: 1-63 characters of a-z, 0-9, '-', "
            "not starting or ending with '-'"
        )
    return name


def key_id(name: str) -> str:
    return KEY_PREFIX + check_host(name)


def host_zone(name: str, domain: str) -> str:
    return check_fqdn(f"{check_host(name)}.{domain.rstrip('.').lower()}")


def new_key(name: str) -> TsigKey:
    return TsigKey(name, "hmac-sha256", secrets.token_bytes(32))


@dataclass(frozen=True)
class Joined:
    """A member host the primary serves: its name, zone and TSIG key."""

    name: str
    zone: str
    key: TsigKey


# --- the primary's Knot part (pure) --------------------------------------------------------


def _key_yaml(key: TsigKey) -> str:
    secret = base64.b64encode(key.secret).decode()
    return f"  - id: {key.name}\n    algorithm: {key.algorithm}\n    secret: {secret}\n"


def own_zone_lines(catalog: str, secondaries: Sequence[IPv6Address]) -> str:
    """Lines for the primary's own public zone in its knot.conf: a catalog member, and
    NOTIFY + transfers to the secondaries."""
    out = f"    catalog-role: member\n    catalog-zone: {check_fqdn(catalog)}.\n"
    if secondaries:
        out += f"    notify: {SECONDARIES}\n    acl: [ {PRIMARY_KEY_ID}, {SECONDARIES} ]\n"
    return out


def render_primary_part(
    joined: Sequence[Joined],
    catalog: str,
    zone_dir: Path,
    secondaries: Sequence[IPv6Address] = (),
    secondary_key: TsigKey | None = None,
) -> str:
    """hosts.conf, included by the primary's knot.conf after its template section.

    Each member's key may update and transfer its own zone only: the ACL is attached to
    that zone alone, and `update-owner: zone` + `update-type` refuse anything but address
    and TXT records inside it even there. The primary's own key (phonebook) may change every
    member zone: `netmux host expire` deletes with it. Pure."""
    check_fqdn(catalog)
    if secondaries and secondary_key is None:
        raise UsageError("secondaries need the secondary TSIG key")
    seen: set[str] = set()
    for j in joined:
        check_fqdn(j.zone)
        if j.zone in seen:
            raise UsageError(f"zone {j.zone} is joined twice")
        seen.add(j.zone)
    keys = [j.key for j in joined] + ([secondary_key] if secondaries and secondary_key else [])
    out = "# Generated by netmux.hosts: the zones of joined hosts and the catalog.\n"
    if keys:
        out += "key:\n" + "".join(_key_yaml(k) for k in keys) + "\n"
    if secondaries:
        addrs = ", ".join(f'"{a}@53"' for a in secondaries)
        out += (
            f"remote:\n  - id: {SECONDARIES}\n    address: [ {addrs} ]\n"
            f"    key: {SECONDARY_KEY}\n\n"
        )
    acls = "".join(
        f"  - id: {j.key.name}\n    key: {j.key.name}\n    action: [ update, transfer ]\n"
        f"    update-owner: zone\n    update-type: [ {', '.join(UPDATE_TYPES)} ]\n"
        for j in joined
    )
    if secondaries:
        acls += f"  - id: {SECONDARIES}\n    key: {SECONDARY_KEY}\n    action: transfer\n"
    if acls:
        out += "acl:\n" + acls + "\n"
    notify = f"    notify: {SECONDARIES}\n" if secondaries else ""
    sec_acl = f", {SECONDARIES}" if secondaries else ""
    out += (
        f"zone:\n  - domain: {catalog}.\n    catalog-role: generate\n"
        f"    acl: [ {PRIMARY_KEY_ID}{sec_acl} ]\n{notify}"
    )
    for j in sorted(joined, key=lambda j: j.zone):
        out += (
            f'  - domain: {j.zone}.\n    storage: "{zone_dir}"\n'
            f"    acl: [ {PRIMARY_KEY_ID}, {j.key.name}{sec_acl} ]\n"
            f"    catalog-role: member\n    catalog-zone: {catalog}.\n{notify}"
        )
    return out


def render_member_zone(zone: str, ns: str, ttl: int) -> str:
    """A member's zone file on the primary: SOA and NS (the primary's name server); the
    member adds the rest by update."""
    check_fqdn(zone)
    check_fqdn(ns)
    return (
        f"$ORIGIN {zone}.\n$TTL {ttl}\n"
        f"@ SOA {ns}. hostmaster.{zone}. 1 16384 2048 1048576 {ttl}\n@ NS {ns}.\n"
    )


def render_secondary_conf(
    directory: Path,
    listen: Sequence[str],
    primary: str,
    catalog: str,
    key: TsigKey,
    primary_port: int = 53,
) -> str:
    """The off-site secondary's whole knot.conf: it interprets the catalog zone and so
    serves every zone it lists, transferred from the primary (NOTIFY from it accepted).
    Pure."""
    check_fqdn(catalog)
    try:
        ip = ipaddress.ip_address(primary)
    except ValueError:
        raise UsageError(f"primary {primary!r} is not an IP address") from None
    listens = ", ".join(f'"{a}"' for a in listen)
    return f"""# Generated by netmux.hosts: an off-site secondary for a netmux primary.
server:
    rundir: "{directory}/run"
    listen: [ {listens} ]

log:
  - target: stderr
    any: info

database:
    storage: "{directory}/db"

key:
{_key_yaml(key)}
remote:
  - id: primary
    address: "{ip}@{primary_port}"
    key: {key.name}

acl:
  - id: primary-notify
    key: {key.name}
    action: notify

control:
    listen: "{directory}/run/knot.sock"

template:
  - id: default
    storage: "{directory}/zones"
    file: "%s.zone"
  - id: netmux-member
    storage: "{directory}/zones"
    file: "%s.zone"
    master: primary
    acl: primary-notify
    zonefile-sync: -1
    zonefile-load: none
    journal-content: all

zone:
  - domain: {catalog}.
    master: primary
    acl: primary-notify
    catalog-role: interpret
    catalog-template: netmux-member
    zonefile-sync: -1
    zonefile-load: none
    journal-content: all
"""


# --- leases (pure) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    stamp: int  # unix time of the member's last refresh
    lease: int  # seconds it announced


_LEASE_RE = re.compile(rf"^{LEASE_TAG} t=(\d{{1,12}}) lease=(\d{{1,9}})$")


def lease_text(now: float, lease: float) -> str:
    return f"{LEASE_TAG} t={int(now)} lease={max(1, round(lease))}"


def parse_lease(text: str) -> Lease | None:
    """The lease of a TXT value (quotes and all, as dnspython prints it); None if not one."""
    m = _LEASE_RE.match(text.strip().strip('"'))
    return Lease(int(m.group(1)), int(m.group(2))) if m else None


def refresh_interval(lease: float) -> float:
    """How often a member refreshes: four chances per lease before it lapses."""
    return max(lease / 4, 0.5)


def expired(lease: Lease | None, now: float, limit: float) -> bool:
    """Whether a zone's records are stale: no lease, or one older than min(its own, limit);
    a stamp further in the future than the limit (a broken clock) counts as stale too."""
    if lease is None:
        return True
    age = now - lease.stamp
    return age > min(lease.lease, limit) or -age > limit


Row = tuple[str, str, str]  # (owner without trailing dot, rtype, value)


def zone_lease(zone: str, rows: Iterable[Row]) -> Lease | None:
    owner = f"{LEASE_LABEL}.{zone}"
    for name, rtype, value in rows:
        if name == owner and rtype == "TXT":
            lease = parse_lease(value)
            if lease is not None:
                return lease
    return None


def stale_rrsets(zone: str, rows: Iterable[Row]) -> list[tuple[str, str]]:
    """What expiry deletes in a lapsed zone: every RRset but the apex SOA and NS. Pure."""
    out = {(n, t) for n, t, _ in rows if not (n == zone and t in ("SOA", "NS"))}
    return sorted(out)


def expiry_plan(
    zones: Mapping[str, Sequence[Row]], now: float, limit: float
) -> dict[str, list[tuple[str, str]]]:
    """For each zone whose lease lapsed and that still holds records, the RRsets to delete."""
    out = {}
    for zone, rows in zones.items():
        if expired(zone_lease(zone, rows), now, limit):
            doomed = stale_rrsets(zone, rows)
            if doomed:
                out[zone] = doomed
    return out


def apex_ns(zone: str, rows: Iterable[Row]) -> set[str]:
    return {v.rstrip(".").lower() for n, t, v in rows if n == zone and t == "NS"}


def ns_plan(zones: Mapping[str, Sequence[Row]], want: Iterable[str]) -> list[str]:
    """The zones whose apex NS set is not `want` (the primary's name server and the
    secondaries'): the public delegation names them all, so must each zone. Pure."""
    wanted = {check_fqdn(n.rstrip(".").lower()) for n in want}
    return sorted(z for z, rows in zones.items() if apex_ns(z, rows) != wanted)


def ns_message(zone: str, key: TsigKey, names: Iterable[str], ttl: int) -> Any:
    """Replace the apex NS set of `zone` (one update: never a zone without NS)."""
    msg = update_message(zone, key)
    msg.replace(zone + ".", ttl, "NS", *sorted(n.rstrip(".") + "." for n in names))
    return msg


def prefixes_of(rows: Iterable[Row]) -> list[IPv6Network]:
    """The /64s of a zone's AAAA records (a host's delegated prefix, as `host list` shows)."""
    nets = {IPv6Network(f"{v}/64", strict=False) for _, t, v in rows if t == "AAAA"}
    return sorted(nets)


def workload_count(zone: str, rows: Iterable[Row], ns_label: str = "dns") -> int:
    """Names with address records, the name server's own excepted."""
    return len({n for n, t, _ in rows if t in ("A", "AAAA") and n != f"{ns_label}.{zone}"})


# --- the join file (pure) ------------------------------------------------------------------


def render_join(name: str, zone: str, primary: str, port: int, catalog: str, key: TsigKey) -> str:
    """What the member needs, in one file the user copies: a Knot key file with comments."""
    return (
        f"# netmux host join file for {name} (zone {zone}): copy it to {name} and run\n"
        f"#   netmux host join THIS_FILE\n"
        f"# netmux-primary: {primary}\n# netmux-port: {port}\n# netmux-zone: {zone}\n"
        f"# netmux-catalog: {catalog}\n" + render_tsig_key(key)
    )


@dataclass(frozen=True)
class JoinInfo:
    primary: str
    port: int
    zone: str
    catalog: str
    key: TsigKey


def parse_join(text: str, source: str) -> JoinInfo:
    got = dict(re.findall(r"^# netmux-(primary|port|zone|catalog): (\S+)$", text, re.M))
    for k in ("primary", "port", "zone", "catalog"):
        if k not in got:
            raise ConfigError(source, k, "(missing)", "a join file made by `netmux host add`")
    try:
        port = int(got["port"])
        if not is_address(got["primary"]):
            check_fqdn(got["primary"].rstrip(".").lower())
    except (ValueError, UsageError):
        raise ConfigError(
            source, "primary", got["primary"], "an address or name, and a port"
        ) from None
    check_fqdn(got["zone"])
    check_fqdn(got["catalog"])
    return JoinInfo(got["primary"], port, got["zone"], got["catalog"], parse_tsig_key(text, source))


# --- DNS edges -----------------------------------------------------------------------------


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def resolve(primary: str, port: int = 53) -> str:
    """The primary's address: `primary` itself, or its name looked up now (IPv6 first)."""
    if is_address(primary):
        return primary
    import socket

    try:
        infos = socket.getaddrinfo(primary, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise StateError(f"cannot look up the primary {primary}: {e.strerror or e}") from None
    addrs = sorted({str(i[4][0]) for i in infos}, key=lambda a: (":" not in a, a))
    if not addrs:
        raise StateError(f"cannot look up the primary {primary}: no address")
    return addrs[0]


def _keyring(key: TsigKey) -> tuple[Any, Any]:
    import dns.name
    import dns.tsigkeyring

    ring = dns.tsigkeyring.from_text({key.name: base64.b64encode(key.secret).decode()})
    return ring, dns.name.from_text(key.name)


def axfr(server: str, port: int, zone: str, key: TsigKey, timeout: float = 3.0) -> list[Row]:
    import dns.query

    ring, name = _keyring(key)
    rows: list[Row] = []
    for msg in dns.query.xfr(
        server,
        zone + ".",
        port=port,
        keyring=ring,
        keyname=name,
        keyalgorithm=key.algorithm,
        lifetime=timeout,
        relativize=False,
    ):
        for rrset in msg.answer:
            for rd in rrset:
                rows.append(
                    (rrset.name.to_text().rstrip(".").lower(), rrset.rdtype.name, rd.to_text())
                )
    return rows


def update_message(
    zone: str,
    key: TsigKey,
    delete: Iterable[tuple[str, str]] = (),
    lease: tuple[str, int] | None = None,
) -> Any:
    """An RFC 2136 update of `zone`: RRsets deleted, the lease TXT (value, ttl) replaced."""
    import dns.update

    ring, name = _keyring(key)
    upd = dns.update.UpdateMessage(
        zone + ".", keyring=ring, keyname=name, keyalgorithm=key.algorithm
    )
    for owner, rtype in delete:
        upd.delete(owner + ".", rtype)
    if lease is not None:
        upd.replace(f"{LEASE_LABEL}.{zone}.", lease[1], "TXT", f'"{lease[0]}"')
    return upd


def send(server: str, port: int, msg: Any, timeout: float = 3.0) -> None:
    import dns.exception
    import dns.query
    import dns.rcode
    import dns.tsig

    try:
        resp = dns.query.tcp(msg, server, timeout=timeout, port=port)
    except dns.tsig.PeerBadKey:  # Knot: no ACL rule lets this key do this update here
        raise StateError(
            f"{server} refused the update of {msg.zone[0].name}: the key may not change it "
            "(NOTAUTH, BADKEY)"
        ) from None
    except (OSError, dns.exception.DNSException) as e:
        raise StateError(f"{server} did not take the update: {e or type(e).__name__}") from None
    if resp.rcode() != dns.rcode.NOERROR:
        raise StateError(f"{server} refused the update: {dns.rcode.to_text(resp.rcode())}")


# --- the member's sink ---------------------------------------------------------------------


@dataclass(frozen=True)
class MemberZones(Zones):
    """Only the public zone goes to the primary: NAME.internal. and ULA reverse zones stay
    on this host (its own Knot)."""

    def all_zones(self) -> list[str]:
        return [self.public]

    def host_only_zones(self) -> list[str]:
        return []


class HostSink(Rfc2136Sink):
    """A phonebook sink on a member: the public records to the primary, on a lease.

    Every refresh (lease/4) reads the zone back (AXFR: records the primary expired while
    this host slept come back) and replaces the lease record; `close` (phonebookd stopping)
    deletes the records and the lease. A host that just goes away leaves them to expiry."""

    name = "hosts"

    def __init__(
        self,
        zones: Zones,
        server: str,
        port: int,
        key: TsigKey | Path,
        lease: float,
        timeout: float = 3.0,
    ) -> None:
        member = MemberZones(zones.public, zones.internal, zones.ttl, zones.ns, ())
        self.primary = server  # an address, or a name looked up at every refresh
        super().__init__(member, server if is_address(server) else "", port, key, 0.0, timeout)
        self.lease = lease
        self.refreshes = 0
        self.resync = False
        self.failures = 0
        self.refresher: asyncio.Task[None] | None = None

    def update(self, records: list[Any]) -> None:
        super().update(records)
        if self.refresher is None:
            self.refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(refresh_interval(self.lease))
            self.resync = True  # not `sent = None` here: an update may be in flight
            self.kick()

    async def synced(self) -> None:
        """Best effort: the records of the last `update` are at the primary, or the primary
        failed to take them (it is down; the sink keeps retrying). A workload on this host
        is ready once its own Knot has its records, primary or not."""
        gen, failures = self.gen, self.failures
        async with self.progress:
            await self.progress.wait_for(lambda: self.done >= gen or self.failures > failures)

    async def work(self) -> None:
        try:
            await self._work()
        except Exception:
            self.failures += 1
            async with self.progress:
                self.progress.notify_all()
            raise

    async def _work(self) -> None:
        if self.resync or not self.server:  # the primary may have been renumbered
            self.server = await asyncio.to_thread(resolve, self.primary, self.port)
        # The lease first: an expiry pass between the two would otherwise delete records
        # that are fresh, under a lease that is not (yet).
        lease = (lease_text(time.time(), self.lease), max(1, round(self.lease)))
        msg = update_message(self.zones.public, self.key, lease=lease)
        await asyncio.to_thread(send, self.server, self.port, msg, self.timeout)
        self.refreshes += 1
        if self.resync:  # read back what the primary holds (it may have expired us)
            self.sent, self.resync = None, False
        await super().work()

    async def abandon(self) -> None:
        """Stop refreshing without removing anything (a host switched off, for tests)."""
        if self.refresher is not None:
            self.refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.refresher
        await self.cancel()

    async def close(self) -> None:
        await self.abandon()
        sent = self.sent or {}
        zone = self.zones.public
        doomed = sorted(k for k in sent if self.zones.zone_of(k[0]) == zone)
        doomed.append((f"{LEASE_LABEL}.{zone}", "TXT"))
        if not self.server:  # never reached the primary: nothing of ours is there
            return
        try:
            await asyncio.to_thread(
                send, self.server, self.port, update_message(zone, self.key, doomed), self.timeout
            )
        except Exception as e:  # the primary is down: expiry removes them there
            journal.warning(f"hosts: could not remove {zone} records at {self.server}: {e}")


def make_sink(cfg: HostConfig, zones: Zones) -> HostSink | None:
    """The member's sink when [hosts] role = "member"; bad settings name their key."""
    h = cfg.hosts
    if h.role != "member":
        return None
    if not h.primary:
        raise ConfigError(cfg.source, "hosts.primary", "", "the primary's address")
    key: TsigKey | Path
    try:
        key = parse_tsig_key(h.key.read_text(), str(h.key))
    except FileNotFoundError:  # not joined yet: this host's own DNS must work regardless
        key = h.key
        journal.warning(f"hosts: {h.key} does not exist yet (`netmux host join FILE`)")
    except OSError as e:
        raise ConfigError(cfg.source, "hosts.key", str(h.key), f"a readable file ({e})") from None
    return HostSink(zones, h.primary, h.port, key, h.lease)


# --- the primary's files -------------------------------------------------------------------


def _write_private(path: Path, text: str, mode: int = 0o640) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _knot_group(directory: Path) -> None:
    """knotd (user knot) reads hosts.conf and writes the member zones' directory."""
    import grp
    import shutil

    with contextlib.suppress(KeyError, PermissionError):
        grp.getgrnam("knot")
        for p in (directory, directory / "zones", directory / HOSTS_CONF):
            if p.exists():
                shutil.chown(p, "knot" if p.is_dir() else None, "knot")


def joined_hosts(cfg: HostConfig) -> list[Joined]:
    """The registry: one key file per joined host in hosts.directory/keys."""
    kdir = cfg.hosts.directory / "keys"
    out = []
    for p in sorted(kdir.glob("*.key")) if kdir.is_dir() else []:
        name = p.stem
        out.append(
            Joined(name, host_zone(name, cfg.dns.domain), parse_tsig_key(p.read_text(), str(p)))
        )
    return out


def secondary_key(cfg: HostConfig, create: bool = True) -> TsigKey | None:
    path = cfg.hosts.directory / f"{SECONDARY_KEY}.key"
    if path.exists():
        return parse_tsig_key(path.read_text(), str(path))
    if not create:
        return None
    key = new_key(SECONDARY_KEY)
    _write_private(path, render_tsig_key(key), 0o600)
    return key


def write_primary(cfg: HostConfig) -> Path:
    """hosts.directory/hosts.conf and every member's zone file (kept if present)."""
    d = cfg.hosts.directory
    (d / "keys").mkdir(parents=True, exist_ok=True)
    (d / "zones").mkdir(parents=True, exist_ok=True)
    zones = Zones.from_config(cfg)
    joined = joined_hosts(cfg)
    for j in joined:
        zf = d / "zones" / f"{j.zone}.zone"
        if not zf.exists():
            zf.write_text(render_member_zone(j.zone, zones.ns, zones.ttl))
    sec = secondary_key(cfg) if cfg.hosts.secondaries else None
    text = render_primary_part(joined, cfg.hosts.catalog, d / "zones", cfg.hosts.secondaries, sec)
    _write_private(d / HOSTS_CONF, text)
    _knot_group(d)
    return d / HOSTS_CONF


def knotc(socket: Path, *args: str) -> None:
    r = subprocess.run(["knotc", "-s", str(socket), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise StateError(f"knotc {' '.join(args)}: {(r.stderr or r.stdout).strip()}")


def _require_role(cfg: HostConfig, role: str, what: str) -> None:
    if cfg.hosts.role != role:
        raise ConfigError(cfg.source, "hosts.role", cfg.hosts.role, f'"{role}" for {what}')


def _primary_key(cfg: HostConfig) -> TsigKey:
    try:
        return parse_tsig_key(cfg.phonebook.tsig_key.read_text(), str(cfg.phonebook.tsig_key))
    except OSError as e:
        raise ConfigError(
            cfg.source, "phonebook.tsig_key", str(cfg.phonebook.tsig_key), f"a readable file ({e})"
        ) from None


def _primary_server(cfg: HostConfig) -> tuple[str, int]:
    if not cfg.phonebook.server:
        raise ConfigError(cfg.source, "phonebook.server", "", "the primary's own Knot address")
    return cfg.phonebook.server, cfg.phonebook.server_port


def add_host(cfg: HostConfig, name: str, address: str, socket: Path | None) -> Path:
    """Register host NAME on the primary: key, zone file, hosts.conf, Knot reloaded (the
    catalog gains the zone). Returns the join file to copy to that host."""
    _require_role(cfg, "primary", "netmux host add")
    check_host(name)
    if name == cfg.hostname:
        raise UsageError(f"host name {name!r} is not allowed: it is the primary itself")
    zone = host_zone(name, cfg.dns.domain)
    kfile = cfg.hosts.directory / "keys" / f"{name}.key"
    if kfile.exists():
        raise UsageError(f"host {name!r} has joined already ({kfile}); `netmux host remove` first")
    kfile.parent.mkdir(parents=True, exist_ok=True)
    key = new_key(key_id(name))
    _write_private(kfile, render_tsig_key(key), 0o600)
    try:
        write_primary(cfg)
        if socket is not None:
            knotc(socket, "reload")
    except Exception:
        kfile.unlink()  # never half-built: the registry is the key files
        write_primary(cfg)
        raise
    join = cfg.hosts.directory / f"{name}{JOIN_SUFFIX}"
    _write_private(
        join,
        render_join(name, zone, address, cfg.phonebook.server_port, cfg.hosts.catalog, key),
        0o600,
    )
    return join


def remove_host(cfg: HostConfig, name: str, socket: Path | None) -> None:
    _require_role(cfg, "primary", "netmux host remove")
    check_host(name)
    kfile = cfg.hosts.directory / "keys" / f"{name}.key"
    if not kfile.exists():
        raise UsageError(f"host {name!r} is not joined (no {kfile})")
    zone = host_zone(name, cfg.dns.domain)
    if socket is not None:
        # Its journal and timers go first: a host added again later under the same name
        # must not get the old records back from Knot's database.
        knotc(socket, "-f", "zone-purge", zone + ".", "+expire", "+journal", "+timers")
    kfile.unlink()
    with contextlib.suppress(FileNotFoundError):
        (cfg.hosts.directory / f"{name}{JOIN_SUFFIX}").unlink()
    write_primary(cfg)
    if socket is not None:
        knotc(socket, "reload")
    with contextlib.suppress(FileNotFoundError):
        (cfg.hosts.directory / "zones" / f"{zone}.zone").unlink()


def read_zone(server: str, port: int, zone: str, key: TsigKey) -> list[Row]:
    """AXFR, with a failure as one StateError line (Knot down, zone not loaded yet)."""
    try:
        return axfr(server, port, zone, key)
    except Exception as e:
        raise StateError(
            f"cannot read {zone} from {server} (AXFR): {e or type(e).__name__}"
        ) from None


def zone_rows(cfg: HostConfig, skip_failed: bool = False) -> dict[str, list[Row]]:
    """Every member zone as the primary's Knot holds it now (AXFR with the primary's key);
    `skip_failed`: leave out a zone that cannot be read (logged), for the expiry pass."""
    server, port = _primary_server(cfg)
    key = _primary_key(cfg)
    out = {}
    for j in joined_hosts(cfg):
        try:
            out[j.zone] = read_zone(server, port, j.zone, key)
        except StateError as e:
            if not skip_failed:
                raise
            journal.warning(f"hosts: {e}")
    return out


def expire(cfg: HostConfig, now: float | None = None) -> dict[str, list[tuple[str, str]]]:
    """One expiry pass on the primary: delete the records of every lapsed member zone."""
    _require_role(cfg, "primary", "netmux host expire")
    server, port = _primary_server(cfg)
    key = _primary_key(cfg)
    rows = zone_rows(cfg, skip_failed=True)
    plan = expiry_plan(rows, time.time() if now is None else now, cfg.hosts.lease)
    for zone, doomed in plan.items():
        send(server, port, update_message(zone, key, doomed))
        journal.info(f"hosts: lease of {zone} lapsed: {len(doomed)} RRset(s) removed")
    # The same pass keeps every zone's NS set on the name servers the delegation names.
    zones = Zones.from_config(cfg)
    own = cfg.public_zone.lower()
    rows[own] = [r for r in read_zone(server, port, own, key) if r[0] == own and r[1] == "NS"]
    want = [zones.ns, *cfg.hosts.secondary_ns]
    for zone in ns_plan(rows, want):
        send(server, port, ns_message(zone, key, want, zones.ttl))
        journal.info(f"hosts: NS of {zone} set to {', '.join(want)}")
    return plan


# --- the `netmux host` command -------------------------------------------------------------


def _socket(args: argparse.Namespace) -> Path | None:
    return None if args.no_reload else Path(args.knot_socket)


def cmd_host(args: argparse.Namespace, cfg: HostConfig) -> int:
    action = args.action
    if action == "add":
        if not args.name or not args.address:
            raise UsageError("netmux host add NAME --address PRIMARY_ADDRESS: both are needed")
        if not is_address(args.address):
            try:
                check_fqdn(args.address.rstrip(".").lower())
            except UsageError:
                raise UsageError(
                    f"--address {args.address!r} is not allowed: an IP address or a name"
                ) from None
        join = add_host(cfg, args.name, args.address, _socket(args))
        print(
            f"{args.name}: zone {host_zone(args.name, cfg.dns.domain)} added; copy {join} "
            f"to {args.name} and run `netmux host join {join.name}` there"
        )
        return 0
    if action == "remove":
        if not args.name:
            raise UsageError("netmux host remove NAME: the host's name is needed")
        remove_host(cfg, args.name, _socket(args))
        return 0
    if action == "join":
        return _join(args, cfg)
    if action == "leave":
        _require_role(cfg, "member", "netmux host leave")
        try:
            key = parse_tsig_key(cfg.hosts.key.read_text(), str(cfg.hosts.key))
        except OSError as e:
            raise ConfigError(
                cfg.source, "hosts.key", str(cfg.hosts.key), f"a readable file ({e.strerror})"
            ) from None
        zone = cfg.public_zone.lower()
        server = resolve(cfg.hosts.primary, cfg.hosts.port)
        rows = read_zone(server, cfg.hosts.port, zone, key)
        send(server, cfg.hosts.port, update_message(zone, key, stale_rrsets(zone, rows)))
        print(
            f"{zone}: records removed at {cfg.hosts.primary}; now `netmux host remove "
            f"{cfg.hostname}` on the primary"
        )
        return 0
    if action == "expire":
        plan = expire(cfg)
        for zone in plan:
            print(f"{zone}: lease lapsed, records removed")
        return 0
    if action == "list":
        return _list(args, cfg)
    raise UsageError(f"netmux host: unknown action {action!r}")


def _join(args: argparse.Namespace, cfg: HostConfig) -> int:
    if not args.name:
        raise UsageError("netmux host join FILE: the join file from `netmux host add` is needed")
    path = Path(args.name)
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"join file {path}: cannot read it ({e.strerror})") from None
    info = parse_join(text, str(path))
    if info.zone != cfg.public_zone.lower():
        raise UsageError(
            f"join file {path}: it is for zone {info.zone}, this host's is {cfg.public_zone}"
        )
    # The key works before it is installed: the primary must accept this lease.
    lease = (lease_text(time.time(), cfg.hosts.lease), max(1, round(cfg.hosts.lease)))
    send(
        resolve(info.primary, info.port),
        info.port,
        update_message(info.zone, info.key, lease=lease),
    )
    cfg.hosts.key.parent.mkdir(parents=True, exist_ok=True)
    _write_private(cfg.hosts.key, render_tsig_key(info.key), 0o600)
    print(
        f"{info.zone}: joined {info.primary}; key in {cfg.hosts.key}. Set in netmux.toml:\n"
        f'[hosts]\nrole = "member"\nprimary = "{info.primary}"\n'
        f"then restart phonebookd"
    )
    return 0


@dataclass(frozen=True)
class HostRow:
    """One line of `netmux host list`."""

    host: str
    zone: str
    state: str  # "primary", "up" or "expired"
    workloads: int
    prefixes: tuple[str, ...]
    last_refresh: int | None


def host_rows(
    primary_zone: str,
    zones: Mapping[str, Sequence[Row]],
    now: float,
    limit: float,
    ns_label: str = "dns",
) -> list[HostRow]:
    """The primary first (always on, no lease), then every member. Pure."""
    out = []
    for zone, rows in zones.items():
        lease = None if zone == primary_zone else zone_lease(zone, rows)
        if zone == primary_zone:
            state = "primary"
        else:
            state = "expired" if expired(lease, now, limit) else "up"
        out.append(
            HostRow(
                zone.split(".", 1)[0],
                zone,
                state,
                workload_count(zone, rows, ns_label),
                tuple(str(p) for p in prefixes_of(rows)),
                lease.stamp if lease else None,
            )
        )
    out.sort(key=lambda h: (h.zone != primary_zone, h.zone))
    return out


def _list(args: argparse.Namespace, cfg: HostConfig) -> int:
    _require_role(cfg, "primary", "netmux host list")
    import dataclasses
    import json

    now = time.time()
    server, port = _primary_server(cfg)
    own = cfg.public_zone.lower()
    zones = {own: read_zone(server, port, own, _primary_key(cfg)), **zone_rows(cfg)}
    out = host_rows(own, zones, now, cfg.hosts.lease, cfg.phonebook.ns_label)
    if args.json:
        print(json.dumps([dataclasses.asdict(h) for h in out], indent=1))
        return 0
    print(f"{'HOST':<16} {'STATE':<8} {'WORKLOADS':>9}  {'REFRESHED':<10} PREFIXES")
    for h in out:
        ago = f"{int(now - h.last_refresh)}s ago" if h.last_refresh else "-"
        prefixes = " ".join(h.prefixes) or "-"
        print(f"{h.host:<16} {h.state:<8} {h.workloads:>9}  {ago:<10} {prefixes}")
    return 0


def main_secondary(argv: Sequence[str] | None = None) -> int:
    """`python -m netmux.hosts secondary DIR --primary ADDR --key FILE`: the secondary's
    knot.conf (for the VPS; docs/hosts.md)."""
    ap = argparse.ArgumentParser(prog="python -m netmux.hosts")
    ap.add_argument("what", choices=["secondary"])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--primary", required=True)
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--key", type=Path, required=True, help="the primary's netmux-secondary.key")
    ap.add_argument("--catalog", default="catalog.netmux.invalid")
    ap.add_argument("--listen", action="append", default=[])
    a = ap.parse_args(argv)
    try:
        key = parse_tsig_key(a.key.read_text(), str(a.key))
        print(
            render_secondary_conf(
                a.directory.absolute(),
                a.listen or ["::@53", "0.0.0.0@53"],
                a.primary,
                a.catalog,
                key,
                a.port,
            ),
            end="",
        )
    except (NetmuxError, OSError) as e:
        print(f"netmux.hosts: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main_secondary())
