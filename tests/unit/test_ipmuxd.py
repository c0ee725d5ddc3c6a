"""ipmuxd's request checks (pure)."""

from __future__ import annotations

import pytest

from netmux import ipmuxd

pytestmark = pytest.mark.unit


def test_parse_request_defaults() -> None:
    req = ipmuxd.parse_request(b'{"name": "web"}', "eth0")
    assert req == ipmuxd.Request("web", "routed", "eth0")
    req = ipmuxd.parse_request(b'{"name": "vm1", "kind": "macvtap", "ifname": "tap0"}', "eth0")
    assert req == ipmuxd.Request("vm1", "macvtap", "tap0")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff\xfe", "JSON object"),
        (b"not json", "JSON object"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "'name'"),
        (b'{"name": 5}', "'name'"),
        (b'{"name": "Bad_Name"}', "not allowed"),
        (b'{"name": "all"}', "reserved"),
        (b'{"name": "web", "kind": "tun"}', "kind 'tun'"),
        (b'{"name": "web", "ifname": "lo"}', "ifname 'lo'"),
        (b'{"name": "web", "ifname": "a/b"}', "ifname"),
        (b'{"name": "web", "owner": 0}', "unknown key 'owner'"),
    ],
)
def test_parse_request_refuses(data: bytes, why: str) -> None:
    with pytest.raises(ipmuxd.RequestError, match=why):
        ipmuxd.parse_request(data, "eth0")


def test_quota() -> None:
    assert ipmuxd.quota_ok({}, 1000, 1)
    assert not ipmuxd.quota_ok({1000: 1}, 1000, 1)
    assert ipmuxd.quota_ok({1000: 1}, 1001, 1)
    assert ipmuxd.quota_ok({0: 99}, 0, 1)  # root is not limited


def test_identity_is_per_user_and_never_a_workloads() -> None:
    from netmux import names

    key = bytes(range(32))
    mac, secret = ipmuxd.identity(key, 1000, "web")
    assert (mac, secret) == ipmuxd.identity(key, 1000, "web")  # stable
    assert mac != ipmuxd.identity(key, 1001, "web")[0]  # another user's "web"
    assert secret != ipmuxd.identity(key, 1001, "web")[1]
    assert mac != names.stable_mac(key, "web") and secret != names.stable_secret(key, "web")
    assert int(mac[:2], 16) & 0x03 == 0x02  # locally administered unicast


def test_routed_devices_are_requested_and_named_per_user() -> None:
    req = ipmuxd.parse_request(b'{"name": "web", "kind": "routed"}', "eth0")
    assert req.kind == "routed"
    peer = ipmuxd.routed_peer(1000, "web")
    assert peer.startswith("nm") and len(peer) == 14
    assert peer != ipmuxd.routed_peer(1001, "web") != ipmuxd.routed_peer(1000, "db")
