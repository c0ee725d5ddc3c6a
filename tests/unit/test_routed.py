"""Pure parts of routed.py: what a routed workload's addresses become when prefixes change."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network

import pytest

from netmux import links, routed

pytestmark = pytest.mark.unit

SECRET = "2001:db8:1234:5678:9abc:def0:1111:2222"
OLD, NEW = IPv6Network("2001:db8:0:1::/64"), IPv6Network("2001:db8:0:2::/64")
ULA = IPv6Network("fd64:cafe::/64")


def addr(net: IPv6Network) -> IPv6Address:
    return links.stable_address(net, SECRET)


def test_a_new_prefix_adds_and_the_old_one_is_deprecated_then_removed() -> None:
    static = IPv6Address("fd64:cafe::53")
    have = (addr(OLD), addr(ULA), static)
    add, deprecate, remove = routed.readdress(SECRET, have, (NEW, ULA), (OLD,))
    assert add == (addr(NEW),)
    assert deprecate == (addr(OLD),)
    assert remove == ()
    have = (*have, addr(NEW))
    add, deprecate, remove = routed.readdress(SECRET, have, (NEW, ULA), ())
    assert (add, deprecate, remove) == ((), (), (addr(OLD),))  # the static one stays


def test_nothing_changes_while_the_prefixes_do_not() -> None:
    have = (addr(OLD), addr(ULA))
    assert routed.readdress(SECRET, have, (OLD, ULA), ()) == ((), (), ())
