"""netmux doctor, the pure half: facts -> checks -> report, and the parsers."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import struct

import pytest

from netmux import config, doctor
from netmux.doctor import Facts, LeaseFact, LinkFact, RaFact

pytestmark = pytest.mark.unit

ALL_KINDS = {k: True for k in doctor.KINDS}
PD_HOST = config.parse_host("", "(test)")
STATIC_HOST = config.parse_host('[mux]\nstatic_addresses = ["2001:db8:0:1::1/64"]\n', "(test)")
GOOD_RA = RaFact(
    "fe80::1", 1800, ("2001:db8:0:1::/64", "fd64:cafe::/64"), ("fd64:cafe::53",), "64:ff9b::/96"
)


def healthy_facts(**changes: object) -> Facts:
    f = Facts(
        kinds=dict(ALL_KINDS),
        mux_exists=True,
        parent=LinkFact("dummy", True),
        gateway=LinkFact("macvlan", True),
        uplinks=("enp2s0",),
        forwarding="1",
        gateway_addresses=("2001:db8:0:1::1/64", "fd64:cafe::1/64", "fe80::1/64"),
        ra=GOOD_RA,
        daemons={"radvd": (10, 11), "dhcpcd": (12,), "tayga": (13,)},
        phonebookd=(14,),
        dns={"internal": "NOERROR", "box.home.arpa": "NOERROR"},
        leases=(
            LeaseFact("/x/enp2s0.lease6", 600.0, 1800, 2880, (("2001:db8:0:1::/64", 3600, 7200),)),
        ),
        neigh_gc_thresh3=32768,
        workloads=3,
    )
    return dataclasses.replace(f, **changes)  # type: ignore[arg-type]


def by_id(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.id: c for c in checks}


def test_all_well() -> None:
    checks = doctor.evaluate(healthy_facts(), PD_HOST)
    assert doctor.healthy(checks)
    bad = [c for c in checks if c.status in ("fail", "warn")]
    assert not bad, bad
    text = doctor.render_text(checks)
    assert text.endswith("all is well (0 warning(s))")
    data = json.loads(doctor.render_json(checks))
    assert data["ok"] is True and {c["id"] for c in data["checks"]} >= {"ra", "pd", "mux.prefix"}


def test_every_failure_says_how_to_fix_it() -> None:
    broken = Facts(
        kinds={k: False for k in doctor.KINDS},
        mux_exists=True,
        parent=None,
        gateway=LinkFact("macvlan", False),
        forwarding="0",
        gateway_addresses=("fe80::1/64",),
        ra=None,
        ra_error="no router advertisement answered a solicitation",
        dns={"internal": "no answer (connection timed out)", "box.home.arpa": "SERVFAIL"},
    )
    checks = doctor.evaluate(broken, PD_HOST)
    failed = [c for c in checks if c.status == "fail"]
    ids = {c.id for c in failed}
    assert {"kernel.macvlan", "kernel.parent", "mux.links", "mux.uplinks", "mux.forwarding",
            "mux.prefix", "mux.ula", "ra", "daemons.radvd", "daemons.dhcpcd", "daemons.tayga",
            "daemons.phonebookd", "dns.internal", "dns.box.home.arpa", "pd"} <= ids  # fmt: skip
    assert all(c.fix for c in failed), [c.id for c in failed if not c.fix]
    assert not doctor.healthy(checks)
    text = doctor.render_text(checks)
    assert "fix: systemctl start netmux-radvd.service (radvd is not running in mux)" in text
    assert text.splitlines()[-1].startswith(f"netmux doctor: {len(failed)} problem(s)")


def test_no_mux_skips_what_depends_on_it() -> None:
    checks = by_id(doctor.evaluate(Facts(kinds=dict(ALL_KINDS)), PD_HOST))
    assert checks["mux.namespace"].status == "fail"
    assert "netmux.target" in checks["mux.namespace"].fix
    for cid in ("mux.links", "ra", "dns", "daemons.radvd", "pd"):
        assert checks[cid].status == "skip", cid


def test_kernel_fallbacks_are_reported_not_failed() -> None:
    kinds = dict(ALL_KINDS, dummy=False, ipvlan=False)
    checks = by_id(doctor.evaluate(healthy_facts(kinds=kinds, parent=LinkFact("veth", True)),
                                   PD_HOST))  # fmt: skip
    assert checks["kernel.parent"].status == "info"
    assert "falls back to veth" in checks["kernel.parent"].detail
    assert "host0 is a veth" in checks["kernel.parent"].detail
    assert checks["kernel.ipvlan"].status == "info"
    no_tap = by_id(doctor.evaluate(healthy_facts(kinds=dict(ALL_KINDS, macvtap=False)), PD_HOST))
    assert no_tap["kernel.macvtap"].status == "warn"
    assert doctor.healthy(no_tap.values())


def test_static_prefix_needs_no_dhcpcd_or_lease() -> None:
    f = healthy_facts(daemons={"radvd": (1,), "tayga": (2,)}, leases=(), uplinks=())
    checks = by_id(doctor.evaluate(f, STATIC_HOST))
    assert checks["daemons.dhcpcd"].status == "info"
    assert checks["pd"].status == "info"
    assert checks["mux.uplinks"].status == "info"
    assert doctor.healthy(checks.values())
    nat_off = config.parse_host("[nat64]\nenabled = false\n", "(t)")
    assert by_id(doctor.evaluate(healthy_facts(daemons={"radvd": (1,), "dhcpcd": (2,)}),
                                 nat_off))["daemons.tayga"].status == "info"  # fmt: skip


@pytest.mark.parametrize(("age", "status"), [(600.0, "ok"), (3000.0, "warn"), (7300.0, "fail")])
def test_pd_lease_age(age: float, status: str) -> None:
    lease = LeaseFact("/x/e.lease6", age, 1800, 2880, (("2001:db8:1::/56", 3600, 7200),))
    (c,) = [c for c in doctor.evaluate(healthy_facts(leases=(lease,)), PD_HOST) if c.id == "pd"]
    assert c.status == status
    assert "2001:db8:1::/56" in c.detail


def test_ra_without_global_prefix_or_default_route_warns() -> None:
    ula_only = dataclasses.replace(GOOD_RA, prefixes=("fd64:cafe::/64",))
    c = by_id(doctor.evaluate(healthy_facts(ra=ula_only), PD_HOST))["ra"]
    assert c.status == "warn" and "no global prefix" in c.detail
    zero = dataclasses.replace(GOOD_RA, lifetime=0)
    assert by_id(doctor.evaluate(healthy_facts(ra=zero), PD_HOST))["ra"].status == "warn"


@pytest.mark.parametrize(
    ("limit", "workloads", "status"),
    [(32768, 500, "ok"), (1024, 300, "ok"), (1024, 468, "warn"), (None, 3, "skip")],
)
def test_neighbour_table_room(limit: int | None, workloads: int, status: str) -> None:
    """One table for all namespaces, ~2 entries a workload: 1024 overflowed at 468 here."""
    f = healthy_facts(neigh_gc_thresh3=limit, workloads=workloads)
    check = by_id(doctor.evaluate(f, PD_HOST))["kernel.neigh"]
    assert check.status == status, check
    if status == "warn":
        assert "90-netmux.conf" in check.fix


def test_not_root() -> None:
    checks = by_id(doctor.evaluate(Facts(root=False), PD_HOST))
    assert checks["root"].status == "warn" and "sudo" in checks["root"].fix
    assert checks["kernel.links"].status == "skip"
    assert checks["daemons"].status == "skip"


# --- parsers ---------------------------------------------------------------------------


def _opt(otype: int, body: bytes) -> bytes:
    raw = bytes([otype, 0]) + body
    raw += bytes(-len(raw) % 8)
    return bytes([otype, len(raw) // 8]) + raw[2:]


def test_parse_ra() -> None:
    pi = (
        struct.pack("!BBIII", 64, 0xC0, 86400, 14400, 0)
        + ipaddress.IPv6Address("2001:db8:0:1::").packed
    )
    rdnss = struct.pack("!HI", 0, 200) + ipaddress.IPv6Address("fd64:cafe::53").packed
    pref64 = struct.pack("!H", (600 // 8) << 3 | 0) + ipaddress.IPv6Address("64:ff9b::").packed[:12]
    head = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    data = head + _opt(1, bytes(6)) + _opt(3, pi) + _opt(25, rdnss) + _opt(38, pref64)
    ra = doctor.parse_ra(data, "fe80::1")
    assert ra == RaFact("fe80::1", 1800, ("2001:db8:0:1::/64",), ("fd64:cafe::53",),
                        "64:ff9b::/96")  # fmt: skip
    assert doctor.parse_ra(bytes([133]) + bytes(20), "x") is None  # an RS
    assert doctor.parse_ra(head + bytes([3, 0]), "x") == RaFact("x", 1800)  # bad option: stop


def test_parse_lease6() -> None:
    iaprefix = struct.pack("!IIB", 3600, 7200, 56) + ipaddress.IPv6Address("2001:db8:1::").packed
    ia_pd = struct.pack("!III", 1, 1800, 2880) + struct.pack("!HH", 26, len(iaprefix)) + iaprefix
    server_id = struct.pack("!HH", 2, 4) + b"abcd"
    msg = bytes([7, 1, 2, 3]) + server_id + struct.pack("!HH", 25, len(ia_pd)) + ia_pd
    assert doctor.parse_lease6(msg) == (1800, 2880, (("2001:db8:1::/56", 3600, 7200),))
    assert doctor.parse_lease6(bytes([7, 1, 2, 3]) + server_id) is None
    assert doctor.parse_lease6(b"") is None


def test_parse_dig() -> None:
    ok = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4242\n"
    assert doctor.parse_dig(ok) == "NOERROR"
    assert doctor.parse_dig(ok.replace("NOERROR", "SERVFAIL")) == "SERVFAIL"
    timeout = (
        ";; communications error to fd64:cafe::53#53: timed out\n;; no servers could be reached\n"
    )
    assert doctor.parse_dig(timeout).startswith("no answer")
    assert doctor.parse_dig("") == "no answer"


def test_phonebook_sinks_that_cannot_work() -> None:
    checks = by_id(doctor.evaluate(healthy_facts(tinydns_data=False), PD_HOST))
    assert checks["phonebook.sinks"].status == "fail"
    assert "tinydns-data" in checks["phonebook.sinks"].detail
    knot = config.parse_host('[phonebook]\nsinks = ["rfc2136"]\n', "(t)")
    c = by_id(doctor.evaluate(healthy_facts(tinydns_data=False), knot))["phonebook.sinks"]
    assert c.status == "fail" and "server" in c.fix
    served = config.parse_host('[phonebook]\nsinks = ["rfc2136"]\nserver = "2001:db8::53"\n', "t")
    assert by_id(doctor.evaluate(healthy_facts(), served))["phonebook.sinks"].status == "ok"


def test_a_lost_host_key_fails_with_how_to_restore_it() -> None:
    checks = by_id(doctor.evaluate(healthy_facts(other_key=("web", "db")), PD_HOST))
    c = checks["host_key"]
    assert c.status == "fail" and "web, db" in c.detail and "restore" in c.fix
    checks = by_id(doctor.evaluate(healthy_facts(host_key=False, other_key=("web",)), PD_HOST))
    assert checks["host_key"].status == "fail" and "is missing" in checks["host_key"].detail
    assert by_id(doctor.evaluate(healthy_facts(), PD_HOST))["host_key"].status == "ok"
