"""ipmuxd and the denylist log under a real systemd: socket activation, the journal.

The container's /etc is the test's own copy, so the `netmux` group (with `nobody` in it)
is added there; the host's /etc is never touched. mux comes from netmux-mux.service.
"""

from __future__ import annotations

import pytest

from netmux import journal
from tests import sysbox

pytestmark = pytest.mark.system

box = sysbox.module_box(config="[deny]\nlog_interval = 0.5\n", units=True)
NOBODY_IN_GROUP = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--init-groups"]
NOBODY_OUTSIDE = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
# The launcher units use: it reads the checkout through binds under /opt, so `nobody` can
# run it even when the checkout lives under /root (mode 0700).
NETMUX = str(sysbox.UNIT_BIN / "netmux")


@pytest.fixture(scope="module")
def ipmux(box: sysbox.SysBox) -> sysbox.SysBox:
    group = box.etc / "group"
    group.write_text(group.read_text() + "netmux:x:990:nobody\n")
    box.systemctl("start", "netmux-mux.service", "ipmuxd.socket")
    return box


def test_socket_activated_device_for_group_member(ipmux: sysbox.SysBox) -> None:
    st = ipmux.run("stat", "-c", "%a %U %G", "/run/netmux/ipmuxd.sock").stdout.split()
    assert st == ["660", "root", "netmux"]
    assert ipmux.show("ipmuxd.service", "ActiveState")["ActiveState"] == "inactive"
    r = ipmux.run(*NOBODY_IN_GROUP, NETMUX, "ipmux", "web", "--", "ip", "-br", "link",
                  "show", "eth0", check=False)  # fmt: skip
    assert r.returncode == 0 and "eth0" in r.stdout and "UP" in r.stdout, r.stderr
    assert ipmux.show("ipmuxd.service", "ActiveState")["ActiveState"] == "active"

    def removed() -> bool:
        msgs = [str(e.get("MESSAGE")) for e in ipmux.journal("-u", "ipmuxd.service")]
        return any("removed eth0" in m for m in msgs)

    ipmux.wait_for(removed, timeout=10)


def test_macvtap_tap_fd_under_the_units_sandbox(ipmux: sysbox.SysBox) -> None:
    check = (
        "import os, stat; print(stat.S_ISCHR(os.fstat(int(os.environ['NETMUX_TAP_FD'])).st_mode))"
    )
    r = ipmux.run(*NOBODY_IN_GROUP, NETMUX, "ipmux", "--kind", "macvtap", "vm", "--",
                  "/usr/bin/python3", "-c", check, check=False)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


def test_outsider_refused(ipmux: sysbox.SysBox) -> None:
    r = ipmux.run(*NOBODY_OUTSIDE, NETMUX, "ipmux", "web2", "--", "true", check=False)
    assert r.returncode == 1 and "permission denied" in r.stderr


def test_denylist_size_is_logged_periodically(ipmux: sysbox.SysBox) -> None:
    # netmux-mux.service loaded the guard table under its sandbox, before any `deny`.
    ipmux.run("ip", "netns", "exec", "mux", "nft", "list", "table", "inet", "netmux_guard")
    ipmux.systemctl("start", "netmux-denylog.service")
    ipmux.run(NETMUX, "deny", "add", "2001:db8:bad::/48")
    ipmux.run(NETMUX, "deny", "add", "2001:db8:bad:1::/64", check=False)  # overlaps: refused
    ipmux.run(NETMUX, "deny", "add", "2001:db8:beef::1", "--timeout", "3600")
    assert ipmux.run(NETMUX, "deny", "count").stdout == "2\n"

    def logged_two() -> bool:
        recs = ipmux.journal(f"MESSAGE_ID={journal.DENYLIST_SIZE}")
        return any(r.get("NETMUX_DENYLIST_SIZE") == "2" for r in recs)

    ipmux.wait_for(logged_two, timeout=10)
    ipmux.systemctl("stop", "netmux-denylog.service")
