"""A routed workload under a real systemd: `link = "routed"` in its workload file,
started as netmux@NAME, reachable from a macvlan sibling, re-addressed by the mux
watcher of netmux-mux.service when the gateway gets a new prefix, and nothing of it
left in mux after `systemctl stop`."""

from __future__ import annotations

import re

import pytest

from tests import sysbox

pytestmark = pytest.mark.system

CONFIG = '[mux]\nstatic_addresses = ["2001:db8:0:1::1/64"]\n'

box = sysbox.module_box(config=CONFIG, units=True)


def addresses(b: sysbox.SysBox, wl: str, net: str = "2001:db8:0:1:") -> list[str]:
    out = b.run("ip", "-n", wl, "-6", "-o", "addr", "show", "scope", "global").stdout
    return re.findall(rf"inet6 ({net}[0-9a-f:]*)/(?:64|128)", out)


def mux_side(b: sysbox.SysBox) -> list[str]:
    """Routed links' pieces in mux: veth ends (nm…), proxy entries, their tables."""
    links = b.run("ip", "-n", "mux", "-o", "link").stdout
    left = re.findall(r"^\d+: (nm[0-9a-f]{12})", links, re.M)
    left += b.run("ip", "-n", "mux", "-6", "neigh", "show", "proxy").stdout.split("\n")
    tables = b.run("ip", "netns", "exec", "mux", "nft", "list", "tables", "netdev").stdout
    left += re.findall(r"netmux_nm[0-9a-f]+", tables)
    return [x for x in left if x.strip()]


def test_routed_unit_is_reachable_follows_the_prefix_and_leaves_nothing(
    box: sysbox.SysBox,
) -> None:
    box.systemctl("start", "netmux-mux.service", "netmux-radvd.service")
    box.write("/etc/netmux/workloads/rt.toml", 'link = "routed"\n')
    try:
        box.systemctl("start", "netmux@rt.service", "netmux@peer.service")
        (rt,) = addresses(box, "rt")
        (peer,) = addresses(box, "peer")
        box.run("ip", "netns", "exec", "peer", "ping", "-6", "-c1", "-W5", rt)
        box.run("ip", "netns", "exec", "rt", "ping", "-6", "-c1", "-W5", peer)
        status = box.run(f"{sysbox.UNIT_BIN}/netmux", "status", "rt").stdout
        assert "(routed)" in status, status
        # A new prefix on the gateway: netmux-mux.service's watcher re-addresses rt.
        box.run("ip", "-n", "mux", "addr", "add", "2001:db8:0:2::1/64", "dev", "gw0", "nodad")
        box.wait_for(lambda: addresses(box, "rt", "2001:db8:0:2:"), timeout=10)
        box.systemctl("stop", "netmux@rt.service")
        box.wait_for(lambda: not mux_side(box), timeout=5)
    finally:
        box.systemctl("stop", "netmux@rt.service", "netmux@peer.service", check=False)
        box.run("ip", "-n", "mux", "addr", "del", "2001:db8:0:2::1/64", "dev", "gw0", check=False)
