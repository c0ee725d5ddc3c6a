"""Knot DNS for the netmux@dns workload: knot.conf and the zone files, from the host config.

Knot serves both zones (and the reverse zones) over IPv6 — Debian's tinydns cannot bind
an IPv6 address — and accepts RFC 2136 updates signed with phonebookd's TSIG key. The
host-only zones (internal., ULA reverse zones) answer host-internal sources only
(mod-queryacl): the global address serves the public zone to the internet, nothing more. Pure
renderers plus `write_all`, which `python -m netmux.phonebook.knot DIR` calls to create a
ready directory (knot.conf, key file, one zone file per zone):

    python -m netmux.phonebook.knot /etc/netmux/knot --listen :: --listen 127.0.0.1
    knotd -c /etc/netmux/knot/knot.conf

`--wait-published` (the recipe's ExecStartPost) waits until the server answers the name
server's own AAAA: phonebookd does not hold the dns workload's start for its own Knot,
so without it `systemctl start netmux@dns` would return before its name resolves.
"""

from __future__ import annotations

import argparse
import grp
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import load_host
from ..errors import NetmuxError, UsageError
from .knotconf import server_head
from .records import Zones, check_fqdn
from .sinks import TsigKey, parse_tsig_key, render_tsig_key

KEY_NAME = "phonebook"
HOST_ONLY_SOURCES = ("fc00::/7", "::1/128", "127.0.0.0/8")


def _listen(addr: str, port: int) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise UsageError(f"listen address {addr!r} is not an IP address") from None
    if not 0 < port < 65536:
        raise UsageError(f"port {port!r} is not allowed: 1-65535")
    return f"{ip}@{port}"


@dataclass(frozen=True)
class KnotSite:
    """One knotd's directory, addresses and zones: what `render_knot_conf` writes and
    `write_all` creates. A primary of several hosts (netmux/hosts.py) passes its part to
    `include` (member zones, their keys and ACLs, the catalog) and lines for its own public
    zone in `public_extra`."""

    zones: Zones
    directory: Path
    listen: Sequence[str]
    port: int = 53
    key_file: Path | None = None  # default: DIRECTORY/phonebook.key
    user: str = ""
    include: Path | None = None
    public_extra: str = ""

    @property
    def key_path(self) -> Path:
        return self.key_file or self.directory / "phonebook.key"


def render_knot_conf(site: KnotSite) -> str:
    """knot.conf: every zone of this host, updates and transfers allowed with the key only."""
    zones, directory, port, user = site.zones, site.directory, site.port, site.user
    include, public_extra, key_file = site.include, site.public_extra, site.key_path
    listen = site.listen
    host_only = set(zones.host_only_zones())
    zone_lines = "".join(
        f"  - domain: {check_fqdn(z)}.\n"
        + ("    module: mod-queryacl/host-only\n" if z in host_only else "")
        + (public_extra if z == zones.public else "")
        for z in zones.all_zones()
    )
    if user and not re.fullmatch(r"[a-z_][a-z0-9_-]*(:[a-z_][a-z0-9_-]*)?", user):
        raise UsageError(f"user {user!r} is not allowed: USER or USER:GROUP")
    user_line = f"    user: {user}\n" if user else ""
    include_line = f'\ninclude: "{include}"\n' if include else ""
    return (
        server_head(
            "netmux.phonebook.knot",
            "Knot DNS for the netmux@dns workload",
            directory,
            [_listen(a, port) for a in listen],
            user_line,
        )
        + f"""\
    # No fsync per update (strace: msync MS_ASYNC only). The journal outlives knotd
    # (a restart or SIGKILL replays it onto the zone files this start rewrote); only a
    # crash of the OS loses its last changes, and then every workload publishes again.
    journal-db-mode: asynchronous

include: "{key_file}"

acl:
  - id: phonebook
    key: {KEY_NAME}
    action: [update, transfer]

control:
    listen: "{directory}/run/knot.sock"

# Host-only zones answer queries from host-internal sources only (ULA, loopback); anyone
# else gets NOTAUTH. By source: Knot knows no query's local address on a wildcard listen.
mod-queryacl:
  - id: host-only
    address: [ {", ".join(f'"{a}"' for a in HOST_ONLY_SOURCES)} ]

template:
  - id: default
    storage: "{directory}/zones"
    file: "%s.zone"
    semantic-checks: off
    # The zone files hold SOA and NS only (rewritten at each start): the journal has the rest.
    zonefile-sync: -1
    acl: phonebook
{include_line}
zone:
{zone_lines}"""
    )


def render_zone(zones: Zones, zone: str) -> str:
    """A zone file with just SOA and NS: phonebookd adds the rest by dynamic update."""
    check_fqdn(zone)
    return (
        f"$ORIGIN {zone}.\n$TTL {zones.ttl}\n"
        f"@ SOA {zones.ns}. hostmaster.{zones.public}. 1 16384 2048 1048576 {zones.ttl}\n"
        f"@ NS {zones.ns}.\n"
    )


def new_key() -> TsigKey:
    return TsigKey(KEY_NAME, "hmac-sha256", secrets.token_bytes(32))


def _check_user(user: str) -> None:
    """Before anything is written: knotd's user and group exist (Knot is installed)."""
    owner, _, group = user.partition(":")
    try:
        pwd.getpwnam(owner)
        if group:
            grp.getgrnam(group)
    except KeyError:
        raise UsageError(
            f"user {user!r} does not exist: is Knot installed? (apt-get install knot)"
        ) from None


def write_all(site: KnotSite) -> TsigKey:
    """Create DIR/knot.conf, DIR/zones/*.zone, DIR/db, DIR/run and the key (kept if present)."""
    zones, directory, user, key_file = site.zones, site.directory, site.user, site.key_path
    if user:
        _check_user(user)
    for sub in ("zones", "db", "run"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    if key_file.exists():
        key = parse_tsig_key(key_file.read_text(), str(key_file))
    else:
        key = new_key()
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w") as f:
            f.write(render_tsig_key(key))
    (directory / "knot.conf").write_text(render_knot_conf(site))
    for zone in zones.all_zones():
        (directory / "zones" / f"{zone}.zone").write_text(render_zone(zones, zone))
    if user:  # knotd drops to this user: it must own its database and run directory
        owner, _, group = user.partition(":")
        for sub in ("zones", "db", "run"):
            shutil.chown(directory / sub, owner, group or None)
            for p in (directory / sub).iterdir():
                shutil.chown(p, owner, group or None)
        shutil.chown(key_file, None, group or owner)
    return key


CREATED = "created-files"


def record_created(state_dir: Path, path: Path) -> None:
    """Note a file netmux made outside its own directories (the TSIG key in /etc/netmux):
    `dpkg --purge` removes what STATE_DIR/created-files lists."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / CREATED).open("a") as f:
        f.write(f"{path}\n")


def wait_served(server: str, name: str, timeout: float, port: int = 53) -> bool:
    """Until `server` answers NAME AAAA with data; False when `timeout` passes first."""
    import dns.exception
    import dns.message
    import dns.query

    deadline = time.monotonic() + timeout
    query = dns.message.make_query(name, "AAAA")
    while True:
        try:
            if dns.query.udp(query, server, timeout=0.5, port=port).answer:
                return True
        except (OSError, dns.exception.DNSException):
            pass  # knotd not listening yet, or no route yet
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netmux.phonebook.knot", description=__doc__)
    ap.add_argument("directory", type=Path, nargs="?")
    ap.add_argument(
        "--wait-published",
        action="store_true",
        help="wait (workload.timeout) until phonebook.server answers the NS name's AAAA",
    )
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--listen", action="append", default=[])
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--key-file", type=Path, default=None, help="default: phonebook.tsig_key")
    ap.add_argument("--user", default="", help="knotd drops privileges to this user")
    args = ap.parse_args(argv)
    if args.directory is None and not args.wait_published:
        ap.error("DIRECTORY is required (or --wait-published)")
    try:
        cfg = load_host(args.config)
        if args.wait_published:
            ns = Zones.from_config(cfg).ns
            server = cfg.phonebook.server or "::1"
            if not wait_served(server, ns, cfg.workload.timeout):
                print(f"netmux.phonebook.knot: {server} does not answer {ns} AAAA after "
                      f"{cfg.workload.timeout:g}s: is phonebookd running with the rfc2136 "
                      "sink? (journalctl -u phonebookd)", file=sys.stderr)  # fmt: skip
            return 0
        key_file = args.key_file or cfg.phonebook.tsig_key
        existed = key_file.exists()
        include, extra = None, ""
        if cfg.hosts.role == "primary":  # the zones of the other hosts too (netmux/hosts.py)
            from .. import hosts

            include = hosts.write_primary(cfg)
            extra = hosts.own_zone_lines(cfg.hosts.catalog, cfg.hosts.secondaries)
        site = KnotSite(
            Zones.from_config(cfg),
            args.directory.absolute(),
            args.listen or ["::"],
            args.port,
            key_file,
            args.user,
            include,
            extra,
        )
        write_all(site)
        if not existed:
            record_created(cfg.paths.state_dir, key_file.absolute())
    except NetmuxError as e:
        print(f"netmux.phonebook.knot: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
