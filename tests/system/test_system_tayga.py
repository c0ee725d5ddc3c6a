"""netmux-tayga.service under a real systemd: NAT64 in mux comes and goes with the unit.

One container: netmux-mux with a static prefix (as in test_system_netmux), then tayga with
a network-specific NAT64 prefix in 2001:db8::/32 and a documentation IPv4 pool. Started,
the TUN is up with routes for the pool and the prefix and the NAT ruleset is loaded;
stopped, all of that is gone (ExecStopPost=netmux nat64 teardown). Also: reloading
netmux-radvd re-renders its config before the HUP.
"""

from __future__ import annotations

import pytest

from netmux import nat64
from netmux.render import nat
from tests import sysbox

pytestmark = [
    pytest.mark.system,
    pytest.mark.requires("tayga"),
]

NAT64 = "2001:db8:64::/96"
POOL = "198.51.100.0/24"
CONFIG = (
    '[mux]\nstatic_addresses = ["2001:db8:0:1::1/64"]\n'
    f'[nat64]\nprefix = "{NAT64}"\npool = "{POOL}"\n'
)

box = sysbox.module_box(config=CONFIG, units=True)


def nat64_state(box: sysbox.SysBox) -> dict[str, str]:
    mux = ("ip", "-n", "mux")
    nft = ("ip", "netns", "exec", "mux", "nft", "list", "table", "ip", nat.TABLE)
    return {
        "link": box.run(*mux, "-br", "link", "show", "nat64", check=False).stdout,
        "v4": box.run(*mux, "-4", "route", "show", "dev", "nat64", check=False).stdout,
        "v6": box.run(*mux, "-6", "route", "show", "dev", "nat64", check=False).stdout,
        "nft": box.run(*nft, check=False).stdout,
    }


def test_tayga_unit_sets_up_and_tears_down_nat64(box: sysbox.SysBox) -> None:
    box.systemctl("start", "netmux-mux.service", "netmux-tayga.service")
    try:
        props = box.show("netmux-tayga.service", "ActiveState", "MainPID")
        assert props["ActiveState"] == "active", box.journal("-u", "netmux-tayga.service")
        comm = f"/proc/{props['MainPID']}/comm"  # "(tayga)" until systemd has exec'ed it
        box.wait_for(lambda: box.run("cat", comm, check=False).stdout.strip() == "tayga")
        st = nat64_state(box)
        assert "UP" in st["link"], st
        assert POOL in st["v4"], st
        assert NAT64 in st["v6"], st
        assert "masquerade" in st["nft"], st
        assert box.show("netmux-tayga.service", "ActiveState")["ActiveState"] == "active"
        conf = box.path("/run/netmux-tayga/tayga.conf").read_text()
        assert f"prefix {NAT64}" in conf and "data-dir /var/lib/netmux/tayga" in conf
    finally:
        box.systemctl("stop", "netmux-tayga.service", check=False)
    assert box.show("netmux-tayga.service", "ActiveState")["ActiveState"] == "inactive"
    st = nat64_state(box)
    assert not st["link"].strip() and not st["nft"].strip(), st


def test_radvd_reload_rerenders_the_config(box: sysbox.SysBox) -> None:
    box.systemctl("start", "netmux-mux.service", "netmux-radvd.service")
    conf = box.path("/run/netmux-radvd/radvd.conf")
    box.wait_for(box.path("/run/netmux-radvd/radvd.pid").exists)  # it has read its config
    conf.write_text("# stale\n")
    pid = box.show("netmux-radvd.service", "MainPID")["MainPID"]
    box.systemctl("reload", "netmux-radvd.service")
    assert "interface gw0" in conf.read_text()
    props = box.show("netmux-radvd.service", "ActiveState", "MainPID")
    assert props == {"ActiveState": "active", "MainPID": pid}


@pytest.mark.skipif(
    nat64.choose(nat64.probe()).name == "jool", reason="Jool is usable here: it is the engine"
)
def test_jool_unit_steps_aside_where_tayga_is_the_engine(box: sysbox.SysBox) -> None:
    """Both NAT64 units may be enabled: here (no loadable jool module) netmux-jool's
    ExecCondition= says no, so it ends inactive, not failed, and tayga is the one."""
    box.systemctl("start", "netmux-mux.service")
    out = box.run(str(sysbox.UNIT_BIN / "netmux"), "nat64", "engine").stdout
    assert out.startswith("tayga: Jool is not usable: "), out
    box.systemctl("start", "netmux-jool.service", check=False)
    props = box.show("netmux-jool.service", "ActiveState", "Result", "ConditionResult")
    assert props["ActiveState"] == "inactive" and props["Result"] == "success", props
    msgs = " ".join(str(r.get("MESSAGE", "")) for r in box.journal("-u", "netmux-jool.service"))
    assert "condition" in msgs.lower(), msgs
