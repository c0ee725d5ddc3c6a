"""Pure rendering of the workload firewall and mux's guard table, and denylist parsing."""

from __future__ import annotations

from ipaddress import IPv6Network

import pytest

from netmux import config, denylist, firewall
from netmux.errors import ConfigError, UsageError

pytestmark = pytest.mark.unit


def wl(*ports: str) -> config.WorkloadConfig:
    return config.workload_from("web", overrides={"ports": list(ports)})


def test_workload_default_drop_and_ports() -> None:
    text = firewall.render_workload(config.HostConfig(), wl("tcp/80", "udp/6000-6010"))
    assert text.startswith("table inet netmux_wl\ndelete table inet netmux_wl\n")
    assert "policy drop;" in text
    assert "ct state established,related accept" in text
    assert 'iif "lo" accept' in text
    assert 'tcp dport 80 counter name "tcp_80" accept' in text
    assert 'udp dport 6000-6010 counter name "udp_6000_6010" accept' in text
    assert "counter tcp_80 { }" in text and "counter udp_6000_6010 { }" in text
    for needed in ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit",
                   "nd-router-advert", "packet-too-big", "time-exceeded",
                   "parameter-problem", "echo-request"):  # fmt: skip
        assert needed in text
    # ND is accepted before any ct-state drop.
    assert text.index("nd-neighbor-solicit") < text.index("ct state invalid drop")


def test_workload_without_ports_or_echo() -> None:
    host = config.parse_host("[firewall]\necho = false\n")
    text = firewall.render_workload(host, wl())
    assert "dport" not in text and "echo-request" not in text
    assert "counter " not in text.split("chain input")[0]


def test_counter_names() -> None:
    assert firewall.counter_name(config.parse_port("sctp/9")) == "sctp_9"
    assert firewall.counter_name(config.parse_port("tcp/1-2")) == "tcp_1_2"


def test_guard_sets_meter_and_forward_policy() -> None:
    host = config.parse_host(
        '[mux]\nuplinks = ["enp*", "eth?", "wan0"]\ngateway = "gw1"\n'
        "[deny]\nprefix_length = 48\nrate = 50\nburst = 10\ntimeout = 30\n"
    )
    entries = [
        firewall.DenyEntry(IPv6Network("2001:db8:bad::/48"), 60),
        firewall.DenyEntry(IPv6Network("2001:db8::5/128")),
    ]
    text = firewall.render_guard(host, entries)
    assert "elements = { 2001:db8:bad::/48 timeout 60s, 2001:db8::5 }" in text
    assert "flags interval, timeout" in text
    mask = "ffff:ffff:ffff::"
    assert f"ip6 saddr & {mask} @auto" in text
    assert (
        f"update @rate {{ ip6 saddr & {mask} limit rate over 50/second burst 10 packets }}" in text
    )
    assert f"add @auto {{ ip6 saddr & {mask} }}" in text
    assert "timeout 30s" in text
    assert 'iifname { "enp*", "eth*", "wan0" } jump guard' in text
    assert 'oifname "gw1" accept' in text
    assert 'oifname "nm*" accept' in text
    assert "ip6 daddr fc00::/7 counter drop" in text
    assert "ct state != established update @rate" in text


def test_guard_connections_and_no_auto() -> None:
    text = firewall.render_guard(config.parse_host('[deny]\ncount = "connections"\n'))
    assert "ct state new update @rate" in text
    text = firewall.render_guard(config.parse_host("[deny]\nauto = false\n"))
    assert "update @rate" not in text and "@deny" in text


def test_ifname_patterns() -> None:
    assert firewall.nft_ifname_patterns(["enp*", "eth[01]", "wan0", "e?x"]) == [
        "enp*",
        "eth*",
        "wan0",
        "e*",
    ]


def test_deny_config_checked() -> None:
    with pytest.raises(ConfigError, match=r"deny\.prefix_length"):
        config.parse_host("[deny]\nprefix_length = 200\n")
    with pytest.raises(ConfigError, match=r"deny\.count"):
        config.parse_host('[deny]\ncount = "bytes"\n')
    with pytest.raises(ConfigError, match=r"ipmux\.group"):
        config.parse_host('[ipmux]\ngroup = "Bad Group"\n')


def test_parse_prefix() -> None:
    assert denylist.parse_prefix("2001:db8:bad::/48") == IPv6Network("2001:db8:bad::/48")
    assert denylist.parse_prefix("2001:db8::1").prefixlen == 128
    for bad in ("2001:db8:bad::1/48", "192.0.2.0/24", "nonsense", "", None):
        with pytest.raises(UsageError):
            denylist.parse_prefix(bad)


def test_parse_set_json() -> None:
    out = {
        "nftables": [
            {"metainfo": {}},
            {
                "set": {
                    "name": "deny",
                    "elem": [
                        "2001:db8:1::5",
                        {
                            "elem": {
                                "val": {"prefix": {"addr": "2001:db8:bad::", "len": 48}},
                                "timeout": 3600,
                                "expires": 3599,
                            }
                        },
                    ],
                }
            },
        ]
    }
    got = denylist.parse_set(out, "manual")
    assert [str(d.prefix) for d in got] == ["2001:db8:1::5/128", "2001:db8:bad::/48"]
    assert got[1].expires == 3599 and got[0].expires is None
    auto = {"nftables": [{"set": {"elem": [{"elem": {"val": "2001:db8:7::", "expires": 5}}]}}]}
    assert str(denylist.parse_set(auto, "auto", 48)[0].prefix) == "2001:db8:7::/48"
    assert denylist.parse_set({"nftables": [{"set": {"name": "auto"}}]}, "auto") == []


def test_entries_to_load_drops_expired() -> None:
    state = {"2001:db8:1::/48": None, "2001:db8:2::/48": 1000.0, "2001:db8:3::/48": 1100.0}
    got = denylist.entries_to_load(state, now=1050.0)
    assert got == [
        firewall.DenyEntry(IPv6Network("2001:db8:1::/48")),
        firewall.DenyEntry(IPv6Network("2001:db8:3::/48"), 50.0),
    ]


def test_guard_aggregates_per_48_and_rate_limits_what_a_full_meter_cannot_track() -> None:
    text = firewall.render_guard(config.parse_host(""))
    assert "update @rate_agg { ip6 saddr & ffff:ffff:ffff:: limit rate over 4000/second" in text
    assert "ip6 saddr & ffff:ffff:ffff:: @auto_agg" in text
    assert "ip6 saddr & ffff:ffff:ffff:ffff:: != @rate limit rate over 1000/second" in text
    off = firewall.render_guard(config.parse_host("[deny]\naggregate_length = 0\n"))
    assert "rate_agg" not in off and "!= @rate" in off
    same = firewall.render_guard(config.parse_host("[deny]\nprefix_length = 48\n"))
    assert "rate_agg" not in same


def test_ra_guard_only_with_a_known_gateway() -> None:
    gw = ("02:00:00:00:00:01", "fe80::1")
    text = firewall.render_workload(config.HostConfig(), wl(), gw)
    assert "icmpv6 type nd-router-advert ether saddr != 02:00:00:00:00:01 counter drop" in text
    assert "icmpv6 type nd-router-advert ip6 saddr != fe80::1 counter drop" in text
    assert text.index("ra-guard") < text.index("nd-router-advert, nd-neighbor-solicit")
    assert "ra-guard" not in firewall.render_workload(config.HostConfig(), wl())
    assert "nd-redirect" not in text  # redirects are never accepted


def test_routed_filter_on_muxs_end_of_the_veth() -> None:
    from ipaddress import IPv6Address

    text = firewall.render_routed("nmabc", "02:00:00:00:00:01", [IPv6Address("2001:db8::5")])
    assert text.startswith("table netdev netmux_nmabc\ndelete table netdev netmux_nmabc\n")
    assert 'hook ingress device "nmabc" priority filter; policy drop;' in text
    assert 'ether saddr != 02:00:00:00:00:01 counter drop comment "source-mac"' in text
    assert "icmpv6 type { nd-router-advert, nd-redirect } counter drop" in text
    assert "ip6 saddr { 2001:db8::5, fe80::/10, :: } accept" in text
    lines = text.splitlines()
    assert lines.index('\t\tcounter drop comment "source-address"') > next(
        i for i, x in enumerate(lines) if "ip6 saddr {" in x
    )
