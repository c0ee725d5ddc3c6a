"""What the phonebook trusts from callers that are not root (verify.py), and one PTR each."""

from __future__ import annotations

from ipaddress import IPv6Network, ip_address
from pathlib import Path

import pytest

from netmux.ifaddr import IFA_F_NODAD
from netmux.phonebook import records as r
from netmux.phonebook import verify
from netmux.phonebook.records import Address

pytestmark = pytest.mark.unit

ULA = IPv6Network("fd64:cafe::/64")
GW = IPv6Network("2001:db8:1::/64")


def a(text: str, prefixlen: int = 64, flags: int = 0) -> Address:
    return Address(ip_address(text), prefixlen, flags)


def test_only_advertised_prefixes_without_nodad_are_trusted() -> None:
    got = verify.trusted_addresses(
        [a("2001:db8:1::7"), a("2001:db8:1::15", flags=IFA_F_NODAD), a("fd64:cafe::53"),
         a("2001:db8:99::7"), a("192.0.2.7", 24)],
        [GW, ULA],
    )  # fmt: skip
    assert [str(x.ip) for x in got] == ["2001:db8:1::7", "fd64:cafe::53"]


def test_advertised_prefixes_are_the_gateways_and_the_ula() -> None:
    nets = verify.advertised([a("2001:db8:1::1"), a("fe80::1"), a("2001:db8:1::2")], ULA)
    assert nets == (ULA, GW)


def test_reserved_names(tmp_path: Path) -> None:
    wl, ns = tmp_path / "workloads", tmp_path / "netns"
    wl.mkdir()
    ns.mkdir()
    (wl / "httpd.toml").write_text("")
    (ns / "dns").write_text("")
    assert "configured workload" in verify.reserved("httpd", wl, ns)
    assert "network namespace" in verify.reserved("dns", wl, ns)
    assert verify.reserved("mine", wl, ns) == ""


def test_limits_say_what_and_how_many() -> None:
    assert verify.over_limit(1, 2, "publications", 1000) == ""
    assert verify.over_limit(2, 2, "publications", 1000) == (
        "uid 1000 already holds 2 publications (at most 2 per user)"
    )


def test_an_address_gets_one_ptr_first_claimant_wins() -> None:
    z = r.Zones("box.example.org", "internal", 60, "dns.box.example.org", (GW,))
    victim = r.publication_records("web", (), [a("2001:db8:1::15")], z)
    forger = r.publication_records("evil", (), [a("2001:db8:1::15"), a("2001:db8:1::7")], z)
    out = r.first_ptr_wins([victim, forger])
    ptrs = {(x.name, x.value) for x in out if x.rtype == "PTR"}
    assert ptrs == {
        (ip_address("2001:db8:1::15").reverse_pointer, "web.box.example.org"),
        (ip_address("2001:db8:1::7").reverse_pointer, "evil.box.example.org"),
    }
    assert len([x for x in out if x.rtype == "AAAA"]) == 3  # address records stay
