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


def test_mux_link_name_fits_and_is_deterministic() -> None:
    n = names.mux_link_name("httpd")
    assert n == names.mux_link_name("httpd") and len(n) <= 15
    assert n != names.mux_link_name("httpe")


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
