"""resolv.conf of a workload: what radvd advertises as RDNSS, else the upstream resolvers."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from netmux import config, resolv

pytestmark = pytest.mark.unit


def test_names_the_resolver_workload_by_default() -> None:
    text = resolv.render(config.HostConfig(), "web")
    assert text is not None
    assert text.splitlines()[1:] == ["nameserver fd64:cafe::53"]
    assert text.startswith(resolv.HEADER)


def test_then_the_forwarders_at_most_three() -> None:
    fwd = tuple(IPv6Address(f"2001:db8::{i}") for i in range(1, 5))
    host = config.HostConfig()
    host = replace(host, resolver=replace(host.resolver, forwarders=fwd))
    text = resolv.render(host, "web") or ""
    assert [x for x in text.splitlines() if x.startswith("nameserver")] == [
        "nameserver fd64:cafe::53", "nameserver 2001:db8::1", "nameserver 2001:db8::2"
    ]  # fmt: skip


def test_write_and_remove_keep_a_users_own_file(tmp_path: Path) -> None:
    host = config.HostConfig()
    p = resolv.write(host, "web", tmp_path)
    assert p == tmp_path / "web" / "resolv.conf" and "fd64:cafe::53" in p.read_text()
    assert resolv.remove("web", tmp_path) and not tmp_path.exists()  # empty: gone too
    tmp_path.mkdir()
    own = tmp_path / "db" / "resolv.conf"
    own.parent.mkdir()
    own.write_text("nameserver 2001:db8::99\n")
    assert resolv.write(host, "db", tmp_path) == own
    assert own.read_text() == "nameserver 2001:db8::99\n"
    assert not resolv.remove("db", tmp_path) and own.exists()
