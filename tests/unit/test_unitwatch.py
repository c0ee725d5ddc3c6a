"""netmux/unitwatch.py: where netmux@ units' cgroups appear, and the watch on it (inotify
on a plain directory here: systemd's mkdir of a cgroup is an mkdir like any other)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from netmux import unitwatch

pytestmark = pytest.mark.unit

V1_CGROUP = "9:name=systemd:/system.slice/netmux-launcher.service\n4:memory:/x\n0::/\n"
V1_MOUNTS = (
    "30 25 0:26 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd\n"
    "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
)
V2_CGROUP = "0::/system.slice/netmux-launcher.service\n"
V2_MOUNTS = "26 22 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID_MOUNTS = V1_MOUNTS + "27 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"


def test_units_dir_on_v1_v2_and_hybrid() -> None:
    want = "/sys/fs/cgroup/systemd/system.slice/system-netmux.slice"
    assert unitwatch.units_dir(V1_CGROUP, V1_MOUNTS) == want
    assert unitwatch.units_dir(V1_CGROUP, HYBRID_MOUNTS) == want  # systemd's own hierarchy
    assert (unitwatch.units_dir(V2_CGROUP, V2_MOUNTS)
            == "/sys/fs/cgroup/system.slice/system-netmux.slice")  # fmt: skip


def test_units_dir_none_without_a_mounted_hierarchy_or_in_a_cgroup_namespace() -> None:
    assert unitwatch.units_dir(V2_CGROUP, V1_MOUNTS) is None
    not_root = V2_MOUNTS.replace(" / /sys/fs/cgroup", " /machine.slice /sys/fs/cgroup")
    assert unitwatch.units_dir(V2_CGROUP, not_root) is None
    assert unitwatch.units_dir("garbage\n", V2_MOUNTS) is None


def test_instance_of() -> None:
    assert unitwatch.instance_of("netmux@httpd.service") == "httpd"
    assert unitwatch.instance_of("netmux@my-vm.service") == "my-vm"
    assert unitwatch.instance_of("netmux@.service") is None
    assert unitwatch.instance_of("netmux@a\\x2fb.service") is None
    assert unitwatch.instance_of("netmux-mux.service") is None
    assert unitwatch.instance_of("netmux@x.scope") is None


def test_parse_events() -> None:
    one = struct.pack("iIII", 3, unitwatch.IN_CREATE, 0, 16) + b"netmux@a.service"
    two = struct.pack("iIII", 3, unitwatch.IN_DELETE, 0, 32) + b"netmux@b.service".ljust(32, b"\0")
    assert unitwatch.parse_events(one + two) == [
        (3, unitwatch.IN_CREATE, "netmux@a.service"),
        (3, unitwatch.IN_DELETE, "netmux@b.service"),
    ]


def test_watch_follows_the_slice_and_its_units(tmp_path: Path) -> None:
    where = tmp_path / unitwatch.SLICE
    w = unitwatch.UnitWatch(str(where))  # the slice does not exist yet
    try:
        assert w.read() == []
        where.mkdir()  # systemd makes the slice with its first unit
        assert w.read() == []
        (where / "netmux@a.service").mkdir()
        (where / "other.service").mkdir()
        (where / "netmux@a.service").rmdir()
        assert w.read() == [(True, "a"), (False, "a")]
        (where / "other.service").rmdir()
        where.rmdir()  # the slice goes, and comes back
        assert w.read() == []
        where.mkdir()
        w.read()
        (where / "netmux@b.service").mkdir()
        assert w.read() == [(True, "b")]
    finally:
        w.close()
    assert (
        not os.path.exists(f"/proc/self/fd/{w.fd}")
        or os.readlink(f"/proc/self/fd/{w.fd}") != "anon_inode:inotify"
    )
