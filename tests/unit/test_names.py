"""Workload names and what is derived from them."""

from __future__ import annotations

import re
import stat
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netmux import names
from netmux.errors import UsageError

pytestmark = pytest.mark.unit

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


@pytest.mark.parametrize("name", ["a", "httpd", "web-1", "x" * 15, "a1b2c3", "dns"])
def test_good_names(name: str) -> None:
    assert names.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "-a", "a-", "A", "ab_c", "a.b", "a" * 16, "a--b", "xn--abc", "all", "default",
     "lo", "a b", "é", "a/b", "a\n"],
)  # fmt: skip
def test_bad_names_say_what_is_allowed(name: str) -> None:
    with pytest.raises(UsageError) as e:
        names.check_name(name)
    assert repr(name) in str(e.value)
    assert "allowed" in str(e.value) or "reserved" in str(e.value)


IFNAME_OK = re.compile(r"^[^/\s:]{1,15}$")
DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.:/ é\n", max_size=20))
def test_every_accepted_name_is_an_ifname_netns_and_dns_label(name: str) -> None:
    if names.is_valid_name(name):
        assert IFNAME_OK.match(name) and name not in (".", "..")  # interface name
        assert "/" not in name and "\0" not in name  # a file name under /run/netns
        assert DNS_LABEL.match(name)  # a DNS label (lower case only)
        assert name[0].isalpha() and "--" not in name


@given(st.from_regex(r"[a-z][a-z0-9-]{0,13}[a-z0-9]", fullmatch=True))
def test_names_of_the_allowed_shape_pass_unless_reserved(name: str) -> None:
    assert names.is_valid_name(name) == ("--" not in name and name not in names.RESERVED)


def test_secret_is_stable_and_differs_by_name_and_key() -> None:
    s = names.stable_secret(KEY_A, "httpd")
    assert s == names.stable_secret(KEY_A, "httpd")
    assert s != names.stable_secret(KEY_A, "httpe")
    assert s != names.stable_secret(KEY_B, "httpd")
    assert re.fullmatch(r"([0-9a-f]{4}:){7}[0-9a-f]{4}", s)


def test_mac_is_stable_local_unicast_and_unique() -> None:
    macs = {names.stable_mac(KEY_A, f"w{i}") for i in range(2000)}
    assert len(macs) == 2000
    for mac in macs:
        first = int(mac[:2], 16)
        assert first & 0x02 and not first & 0x01
    assert names.stable_mac(KEY_A, "w1") != names.stable_mac(KEY_B, "w1")


def test_secrets_unique_across_many_names() -> None:
    assert len({names.stable_secret(KEY_A, f"w{i}") for i in range(2000)}) == 2000


def test_host_key_created_once_mode_0600(tmp_path: Path) -> None:
    p = tmp_path / "lib" / "host.key"
    k1 = names.load_host_key(p)
    assert len(k1) == 32
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert names.load_host_key(p) == k1
    assert not [f for f in p.parent.iterdir() if f.name.endswith(".tmp")]


def test_host_key_of_wrong_size_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "host.key"
    p.write_bytes(b"short")
    with pytest.raises(Exception, match="expected 32"):
        names.load_host_key(p)


# Literal values computed before any refactor: a change of the HMAC inputs or of the
# derivation moves every workload's addresses, so these must never change.
PINNED = {
    "httpd": (
        "5a:47:e7:8a:e2:18",
        "4dd7:2d9f:1b00:d158:b466:a261:ec40:47db",
        "fe80::f15a:d255:d34a:8d23",
        "fd64:cafe::cd03:125d:be83:431c",
        "2001:db8:1:2:23a0:e7ed:99ff:95ab",
    ),
    "web-1": (
        "32:64:97:40:5f:0a",
        "1343:fe39:ecdd:89e3:87b1:1260:1216:1327",
        "fe80::1cc4:475c:b2f8:7d6",
        "fd64:cafe::88ba:dd11:2938:e10b",
        "2001:db8:1:2:6b3e:5880:8ee5:5cb0",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_workload_identity_is_pinned(name: str) -> None:
    mac, secret, link_local, ula, global_ = PINNED[name]
    assert names.stable_mac(KEY_A, name) == mac
    assert names.stable_secret(KEY_A, name) == secret
    assert str(names.stable_privacy_address(secret, "fe80::/64")) == link_local
    assert str(names.stable_privacy_address(secret, "fd64:cafe::/64")) == ula
    assert str(names.stable_privacy_address(secret, "2001:db8:1:2::/64")) == global_


def test_host_mux_and_ipmux_identities_are_pinned() -> None:
    from netmux import ipmuxd, mux

    assert names.key_id(KEY_A) == "2132e75afabd0af3"
    assert mux.derived_mac(KEY_A, "gateway") == "4a:07:5d:4b:bd:3e"
    assert mux.derived_mac(KEY_A, "root") == "36:e9:af:89:0a:79"
    assert mux.derived_secret(KEY_A, "root") == "1616:dfe8:f780:be9c:bbcc:2bab:44ec:c120"
    assert ipmuxd.identity(KEY_A, 1000, "dev0") == (
        "d6:23:10:72:72:4d",
        "cf74:4158:4a33:2b28:c8ea:23de:9454:76e1",
    )
