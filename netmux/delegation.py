"""The public delegation follows the prefix: NS + glue for HOSTNAME.DOMAIN in the parent.

Whoever hosts DOMAIN (the parent zone) delegates HOSTNAME.DOMAIN to the DNS workload,
`ns_label.HOSTNAME.DOMAIN`, whose global address changes with every renumbering. phonebookd
publishes that workload's AAAA records; this sink sends the parent, for each new set, one
RFC 2136 update signed with TSIG ([delegation] in netmux.toml):

    HOSTNAME.DOMAIN.            NS    ns_label.HOSTNAME.DOMAIN.
    ns_label.HOSTNAME.DOMAIN.   AAAA  (the workload's global addresses: glue)

and retries (every second, phonebook's sink loop) until the parent acknowledges it; each
acknowledged change is logged with MESSAGE_ID=journal.DELEGATION_UPDATED. With no global
address left (the prefix withdrawn) the glue is deleted and the NS stays. Pure parts
(`plan`, `message`) are unit-tested; the sink is the thin edge.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from . import journal
from .config import HostConfig
from .errors import ConfigError
from .phonebook.knotconf import server_head
from .phonebook.records import Record, check_fqdn
from .phonebook.sinks import TsigKey, _Coalescer, parse_tsig_key


@dataclass(frozen=True)
class Plan:
    """One update of the parent zone. Names without trailing dots."""

    zone: str  # the parent
    child: str  # HOSTNAME.DOMAIN
    ns: str  # the name server (inside the child: its AAAA are glue)
    glue: frozenset[str]  # AAAA values
    ttl: int


def parent_zone(cfg: HostConfig) -> str:
    zone = (cfg.delegation.zone or cfg.dns.domain).rstrip(".").lower()
    child = cfg.public_zone.lower()
    if not child.endswith("." + zone):
        raise ConfigError(cfg.source, "delegation.zone", zone, f"a parent of the host zone {child}")
    return check_fqdn(zone)


def plan(cfg: HostConfig, records: list[Record]) -> Plan:
    """The delegation for the records phonebookd publishes now. Pure."""
    child = cfg.public_zone.lower()
    ns = f"{cfg.phonebook.ns_label}.{child}"
    glue = frozenset(r.value for r in records if r.name == ns and r.rtype == "AAAA")
    return Plan(parent_zone(cfg), child, ns, glue, cfg.delegation.ttl)


def message(p: Plan, key: TsigKey) -> Any:
    """The RFC 2136 update (a dnspython UpdateMessage) for `p`, signed with `key`."""
    import dns.name
    import dns.tsigkeyring
    import dns.update

    keyring = dns.tsigkeyring.from_text({key.name: base64.b64encode(key.secret).decode()})
    upd = dns.update.UpdateMessage(
        p.zone + ".", keyring=keyring, keyname=dns.name.from_text(key.name),
        keyalgorithm=key.algorithm,
    )  # fmt: skip
    upd.replace(p.child + ".", p.ttl, "NS", p.ns + ".")
    if p.glue:
        upd.replace(p.ns + ".", p.ttl, "AAAA", *sorted(p.glue))
    else:
        upd.delete(p.ns + ".", "AAAA")
    return upd


class DelegationSink(_Coalescer):
    """A phonebook sink: keeps the parent's NS and glue on the DNS workload's addresses."""

    name = "delegation"

    def __init__(self, cfg: HostConfig, key: TsigKey, timeout: float = 3.0) -> None:
        super().__init__(0.0)
        self.cfg = cfg
        self.key = key
        self.timeout = timeout
        self.want: Plan | None = None
        self.sent: Plan | None = None

    def update(self, records: list[Record]) -> None:
        self.want = plan(self.cfg, records)
        if self.want != self.sent:
            self.kick()

    async def work(self) -> None:
        import dns.asyncquery
        import dns.rcode

        p = self.want
        if p is None or p == self.sent:
            return
        d = self.cfg.delegation
        resp = await dns.asyncquery.tcp(message(p, self.key), d.server, timeout=self.timeout,
                                        port=d.port)  # fmt: skip
        if resp.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(
                f"delegation: {d.server} refused the update of {p.zone}: "
                + dns.rcode.to_text(resp.rcode())
            )
        self.sent = p
        glue = " ".join(sorted(p.glue)) or "(none: glue removed)"
        journal.info(
            f"delegation: {p.child} NS {p.ns} AAAA {glue} acknowledged by {d.server} "
            f"(zone {p.zone})",
            journal.DELEGATION_UPDATED,
            address=next(iter(sorted(p.glue)), None),
        )


def make_sink(cfg: HostConfig) -> DelegationSink | None:
    """The sink when [delegation] names a server; bad settings name their key."""
    d = cfg.delegation
    if not d.server:
        return None
    parent_zone(cfg)
    try:
        text = d.tsig_key.read_text()
    except OSError as e:
        raise ConfigError(
            cfg.source, "delegation.tsig_key", str(d.tsig_key), f"a readable file ({e})"
        ) from None
    return DelegationSink(cfg, parse_tsig_key(text, str(d.tsig_key)))


def parent_knot_conf(zone: str, directory: str, listen: list[str], key_file: str) -> str:
    """knot.conf for a parent zone that accepts these updates (the lab's public DNS and
    tests): one zone, updates allowed with the key only. Pure."""
    check_fqdn(zone)
    head = server_head("netmux.delegation", "a parent zone accepting delegation updates",
                       directory, listen)  # fmt: skip
    return (
        head
        + f"""
include: "{key_file}"

acl:
  - id: delegation
    key: {KEY_NAME}
    action: update

zone:
  - domain: {zone}.
    storage: "{directory}/zones"
    file: "%s.zone"
    zonefile-sync: -1
    acl: delegation
"""
    )


def parent_zone_file(zone: str, ns_address: str, ttl: int = 60) -> str:
    """The parent's zone: SOA and NS (ns.ZONE at `ns_address`); delegations come by update."""
    check_fqdn(zone)
    return (
        f"$ORIGIN {zone}.\n$TTL {ttl}\n"
        f"@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 {ttl}\n"
        f"@ NS ns.{zone}.\nns AAAA {ns_address}\n"
    )


KEY_NAME = "delegation"
