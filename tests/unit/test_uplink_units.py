"""Pure parts of the uplink: renumbering decisions, the upstream's configs (checked by the
real kea-dhcp6 -t, radvd -c and unbound-checkconf where installed), version parsing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from netmux import daemons, renumber
from netmux.config import parse_host
from netmux.lab import upstream

pytestmark = pytest.mark.unit

P1 = IPv6Network("2001:db8:0:1::/64")
P2 = IPv6Network("2001:db8:0:2::/64")


def test_first_prefix_is_added_nothing_deprecated() -> None:
    ch = renumber.plan(renumber.State(), [P1], now=100.0)
    assert ch.added == (P1,) and ch.removed == () and ch.changed
    assert ch.state.current == (P1,) and not ch.state.deprecated


def test_new_delegation_deprecates_the_old_for_two_hours() -> None:
    ch = renumber.plan(renumber.State((P1,)), [P2], now=100.0)
    assert ch.added == (P2,) and ch.removed == (P1,)
    assert ch.state.deprecated == {P1: 100.0 + renumber.KEEP_DEPRECATED}


def test_unchanged_is_quiet_and_expired_deprecations_drop() -> None:
    old = renumber.State((P2,), {P1: 150.0})
    assert not renumber.plan(old, [P2], now=100.0).changed
    assert renumber.plan(old, [P2], now=100.0).state.deprecated == {P1: 150.0}
    assert renumber.plan(old, [P2], now=200.0).state.deprecated == {}


def test_prefix_coming_back_is_no_longer_deprecated() -> None:
    ch = renumber.plan(renumber.State((P2,), {P1: 9e9}), [P1], now=100.0)
    assert P1 not in ch.state.deprecated and ch.state.deprecated == {P2: 100.0 + 7200}


def test_state_round_trips_and_garbage_reads_as_empty(tmp_path: Path) -> None:
    st = renumber.State((P2,), {P1: 123.5})
    assert renumber.State.from_json(st.to_json()) == st
    assert renumber.State.from_json("{not json") == renumber.State()
    (tmp_path / renumber.STATE_FILE).write_text(st.to_json())
    assert renumber.deprecated_prefixes(tmp_path, now=100.0) == [P1]
    assert renumber.deprecated_prefixes(tmp_path, now=200.0) == []


def test_apply_writes_state_renders_radvd_and_signals_it(tmp_path: Path) -> None:
    conf = tmp_path / "radvd.conf"
    pid = tmp_path / "radvd.pid"
    pid.write_text("999999999\n")  # no such process: the signal is skipped quietly
    ch = renumber.plan(renumber.State((P1,)), [P2], now=100.0)
    renumber.apply(ch, tmp_path, lambda dep: f"deprecated {dep}\n", conf, pid, "gw0")
    assert conf.read_text() == f"deprecated {[P1]}\n"
    assert renumber.load(tmp_path).current == (P2,)


def test_kea_config_delegates_the_lab_prefix_with_fast_renewals(tmp_path: Path) -> None:
    host = parse_host("")
    p = upstream.plan(host)
    conf = json.loads(upstream.kea_config(p, tmp_path))["Dhcp6"]
    (sub,) = conf["subnet6"]
    assert sub["subnet"] == "2001:db8::/64" and sub["interface"] == host.lab.router_link
    assert sub["pd-pools"] == [{"prefix": "2001:db8:0:1::", "prefix-len": 64, "delegated-len": 64}]
    assert conf["lease-database"] == {"type": "memfile", "persist": False}
    assert conf["server-id"]["persist"] is False
    assert conf["renew-timer"] == upstream.RENEW
    moved = json.loads(upstream.kea_config(upstream.plan(host, P2), tmp_path))
    assert moved["Dhcp6"]["subnet6"][0]["pd-pools"][0]["prefix"] == "2001:db8:0:2::"


@pytest.mark.requires("kea-dhcp6")
def test_real_kea_accepts_it(tmp_path: Path) -> None:
    conf = tmp_path / "kea.conf"
    # kea -t insists that the interface exists: check it on loopback.
    p = dataclasses.replace(upstream.plan(parse_host("")), link="lo")
    conf.write_text(upstream.kea_config(p, tmp_path))
    env = {**os.environ, **upstream.kea_env(tmp_path)}
    r = subprocess.run(["kea-dhcp6", "-t", str(conf)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.requires("radvd")
def test_real_radvd_accepts_the_router_config(tmp_path: Path) -> None:
    conf = tmp_path / "radvd.conf"
    conf.write_text(upstream.radvd_config(upstream.plan(parse_host(""))))
    r = subprocess.run(
        ["radvd", "-m", "stderr", "-c", "-C", str(conf)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.requires("unbound-checkconf")
def test_real_unbound_accepts_the_upstream_dns(tmp_path: Path) -> None:
    conf = tmp_path / "dns.conf"
    text = upstream.dns_config(upstream.plan(parse_host("")), tmp_path)
    assert f'local-data: "v4only.{upstream.ZONE}. 60 IN A {upstream.WEB4}"' in text
    assert "AAAA" not in text.split("v4only")[1].split("\n")[0]  # A only: DNS64's job
    conf.write_text(text)
    r = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_udhcpd_config_serves_documentation_addresses(tmp_path: Path) -> None:
    text = upstream.udhcpd_config(upstream.plan(parse_host("")), tmp_path)
    assert "start 192.0.2.100\nend 192.0.2.199\n" in text and "opt router 192.0.2.1\n" in text


def test_resolver_of_the_lab_gets_a_stub_for_the_test_zone() -> None:
    host = upstream.resolver_host(parse_host(""))
    assert host.resolver.stubs == (f"{upstream.ZONE}=2001:db8::53",)
    assert upstream.resolver_host(host).resolver.stubs == host.resolver.stubs  # idempotent
    assert upstream.resolver_name(host) == "resolver"
    assert upstream.resolver_name(parse_host('[mux]\nnetns = "n1234mux"\n')) == "n1234muxdns"


def test_parse_version() -> None:
    assert daemons.parse_version("dhcpcd 9.4.1") == (9, 4, 1)
    assert daemons.parse_version("Version 1.17.1\n") == (1, 17, 1)
    assert daemons.parse_version("no digits") == ()


@pytest.mark.requires("unbound-checkconf")
def test_probe_tells_a_known_keyword_from_an_unknown_one() -> None:
    """The probe mechanism itself: a keyword every unbound knows passes, nonsense fails."""
    ok = 'server:\n  chroot: ""\n  username: ""\n  do-ip6: yes\n'
    assert daemons._accepts(["unbound-checkconf"], ok)
    assert not daemons._accepts(["unbound-checkconf"], ok + "  no-such-keyword: yes\n")


def test_one_renumbered_event_whichever_dhcpcd_reports_first() -> None:
    # old and new in one hook run
    assert renumber.renumbered(renumber.plan(renumber.State((P1,)), [P2], now=100.0))
    # the new one first (old still there), then the old one leaves: only the second counts
    both = renumber.plan(renumber.State((P1,)), [P1, P2], now=100.0)
    assert not renumber.renumbered(both)
    assert renumber.renumbered(renumber.plan(both.state, [P2], now=101.0))
    # a first delegation, or a loss without a successor, is no renumbering
    assert not renumber.renumbered(renumber.plan(renumber.State(), [P1], now=100.0))
    assert not renumber.renumbered(renumber.plan(renumber.State((P1,)), [], now=100.0))


def test_summary_current_with_lifetimes_and_age_previous_with_deprecation() -> None:
    from netmux.render.radvd import INFINITE, Lease

    first = renumber.plan(renumber.State(), [P1], now=100.0).state
    st = renumber.plan(first, [P2], now=400.0).state
    assert st.since == {P2: 400.0}
    rep = renumber.summary(st, [Lease(P2, 2000, 4000)], now=460.0)
    assert rep["current"] == [
        {"prefix": str(P2), "preferred_seconds": 2000, "valid_seconds": 4000,
         "since": 400.0, "age_seconds": 60.0}
    ]  # fmt: skip
    assert rep["previous"] == [
        {"prefix": str(P1), "deprecated_at": 400.0,
         "advertised_until": 400.0 + renumber.KEEP_DEPRECATED}
    ]  # fmt: skip
    text = renumber.prefix_text(rep)
    assert text.startswith(f"prefix {P2}: preferred 2000s, valid 4000s left, since ")
    assert f"previous {P1}: deprecated " in text
    static = renumber.summary(st, [Lease(P2, INFINITE, INFINITE)], now=460.0)
    assert static["current"][0]["valid_seconds"] is None  # type: ignore[index]
    assert "static" in renumber.prefix_text(static)
    assert renumber.prefix_text({"current": [], "previous": []}) == "prefix: none delegated\n"
    assert renumber.State.from_json(st.to_json()) == st


def test_prefix_metrics() -> None:
    from netmux import stats

    rep = {
        "workloads": [],
        "denylist": None,
        "prefixes": {
            "current": [{"prefix": str(P2), "preferred_seconds": 2000, "valid_seconds": 4000,
                         "since": 400.0, "age_seconds": 60.0}],
            "previous": [{"prefix": str(P1), "deprecated_at": 400.0, "advertised_until": 7600.0}],
        },
    }  # fmt: skip
    text = stats.prometheus(rep)
    assert f'netmux_prefix_info{{prefix="{P2}"}} 1' in text
    assert f'netmux_prefix_age_seconds{{prefix="{P2}"}} 60.0' in text
    assert f'netmux_prefix_valid_seconds{{prefix="{P2}"}} 4000' in text
    assert f'netmux_prefix_deprecated_timestamp_seconds{{prefix="{P1}"}} 400.0' in text
