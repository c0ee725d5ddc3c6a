"""The uplink under a real systemd, end to end: the lab's upstream (kea delegating
2001:db8:0:1::/64, udhcpd, an IPv4-only web server, DNS for isp.test) runs in a router
namespace inside the container; netmux-dhcpcd gets the delegation onto gw0 (its hook,
under the unit's sandbox, records it in /run/netmux and re-renders + HUPs radvd),
netmux-tayga does NAT64, and netmux@resolver from recipes/resolver does DNS64: a
workload unit resolves the A-only v4only.isp.test to a synthesized AAAA and fetches the
page through NAT64. Then radvd restarts and the ISP delegates a new prefix: the hook
still reaches the new radvd (old prefix deprecated in its config) and the workload
re-addresses. Only documentation addresses; NAT64 under 2001:db8:64::/96.
"""

from __future__ import annotations

import json
import re
from ipaddress import IPv6Address, IPv6Network

import pytest

from netmux.lab import upstream
from tests import sysbox

pytestmark = [
    pytest.mark.system,
    pytest.mark.requires("kea-dhcp6", "dhcpcd", "tayga", "unbound", "busybox"),
]

PREFIX = IPv6Network("2001:db8:0:1::/64")  # [lab] prefix (default): what kea delegates
NEW = IPv6Network("2001:db8:0:2::/64")  # ... and then instead
NAT64 = IPv6Network("2001:db8:64::/96")
CONFIG = (
    '[mux]\nuplinks = ["labup*"]\n'
    f'[nat64]\nprefix = "{NAT64}"\npool = "198.51.100.0/24"\n'
    f'[resolver]\nstubs = ["{upstream.ZONE}={upstream.DNS6.ip}"]\n'
)
RECIPE = sysbox.REPO / "recipes" / "resolver"
# The upstream router and its daemons (supervised, in the container's own /run). mux is
# made first and netmux-mux.service started after the cable: its NIC watcher would adopt
# the lab's veth between lab.cable_up's `link add` and `link set alias`.
LAB = """
from pathlib import Path
from netmux import config, lab, mux
from netmux.lab import upstream
host = config.load_host()
mux.up(host)
lab.router_up(host)
lab.cable_up(host)
lab.router_routes(host)
upstream.up(host, Path("/run/lab"))
"""
RENUMBER = f"""
from ipaddress import IPv6Network
from pathlib import Path
from netmux import config
from netmux.lab import upstream
upstream.renumber(config.load_host(), Path("/run/lab"), IPv6Network("{NEW}"))
"""

box = sysbox.module_box(config=CONFIG, units=True)


def global_addrs(box: sysbox.SysBox, netns: str, dev: str) -> list[IPv6Address]:
    out = box.run("ip", "-n", netns, "-6", "-o", "addr", "show", "dev", dev, "scope", "global")
    return [IPv6Address(a) for a in re.findall(r"inet6 ([0-9a-f:]+)/", out.stdout)]


def gw_prefixes(box: sysbox.SysBox) -> list[str]:
    out = box.run("ip", "-n", "mux", "-6", "-o", "addr", "show", "dev", "gw0", "scope", "global")
    return re.findall(r"inet6 (\S+) .*dynamic", out.stdout)


def sandbox_refusals(box: sysbox.SysBox, unit: str) -> list[str]:
    pat = r"not permitted|Read-only file system|denied"
    return [
        str(r["MESSAGE"]) for r in box.journal("-u", unit) if re.search(pat, str(r.get("MESSAGE")))
    ]


def test_pd_nat64_and_dns64_under_systemd(box: sysbox.SysBox) -> None:
    box.run(str(sysbox.VENV_BIN / "python"), "-c", LAB)
    box.systemctl("start", "netmux-mux.service", "netmux-radvd.service")
    for u in ("netmux-dhcpcd.service", "netmux-tayga.service"):
        r = box.systemctl("start", u, check=False)
        assert r.returncode == 0, "\n".join(str(j.get("MESSAGE")) for j in box.journal("-u", u))

    # PD: the delegated prefix on gw0 (a lease: dynamic), recorded by the sandboxed hook,
    # radvd re-rendered and HUPed by it.
    box.wait_for(lambda: gw_prefixes(box), timeout=15)
    assert IPv6Address(gw_prefixes(box)[0].split("/")[0]) in PREFIX
    state = box.path("/run/netmux/prefixes.json")
    box.wait_for(state.exists)
    assert json.loads(state.read_text())["current"] == [str(PREFIX)]
    box.wait_for(
        lambda: any("reread" in str(r.get("MESSAGE")) for r in box.journal("-u", "netmux-radvd"))
    )
    for u in ("netmux-dhcpcd.service", "netmux-radvd.service", "netmux-tayga.service"):
        assert box.show(u, "ActiveState")["ActiveState"] == "active", u
        assert not sandbox_refusals(box, u), (u, sandbox_refusals(box, u))

    # The resolver recipe as installed by its README.
    box.write("/etc/netmux/workloads/resolver.toml", (RECIPE / "resolver.toml").read_text())
    dropin = RECIPE / "netmux@resolver.service.d" / "unbound.conf"
    box.add_dropin("netmux@resolver.service", "unbound.conf", dropin.read_text())
    box.systemctl("start", "netmux@resolver.service", "netmux@client.service")
    main = box.show("netmux@resolver.service", "MainPID")["MainPID"]
    assert box.run("cat", f"/proc/{main}/comm").stdout.strip() == "unbound"

    # DNS64 + NAT64 from a workload unit (IPv4 for the masquerade comes by DHCPv4).
    box.wait_for(lambda: box.run("ip", "-n", "mux", "-4", "route", "show", "default").stdout)
    dig = ("ip", "netns", "exec", "client", "dig", "+short", "+time=1", "+tries=1",
           "@fd64:cafe::53", f"v4only.{upstream.ZONE}", "AAAA")  # fmt: skip
    # dig +short prints ";; connection timed out ..." while unbound is still starting: only
    # answer lines count.
    aaaa = box.wait_for(
        lambda: [ln for ln in box.run(*dig, check=False).stdout.split("\n")
                 if ln and not ln.startswith(";")],
        timeout=15,
    )  # fmt: skip
    assert isinstance(aaaa, list)
    synth = IPv6Address(aaaa[0])
    assert synth in NAT64 and synth.packed[-4:] == upstream.WEB4.packed
    page = box.run("ip", "netns", "exec", "client", "curl", "-sS", "-m", "10", "-g",
                   f"http://[{synth}]/")  # fmt: skip
    assert page.stdout == upstream.PAGE

    # Renumbering under systemd, after a radvd restart (a new /run/netmux-radvd).
    box.systemctl("restart", "netmux-radvd.service")
    box.wait_for(box.path("/run/netmux-radvd/radvd.pid").exists)
    box.run(str(sysbox.VENV_BIN / "python"), "-c", RENUMBER)
    box.wait_for(lambda: json.loads(state.read_text())["current"] == [str(NEW)], timeout=10)
    conf = box.path("/run/netmux-radvd/radvd.conf")

    def old_prefix_deprecated() -> bool:  # its own block, preferred 0 (it was a lease block)
        text = conf.read_text()
        i = text.find(f"prefix {PREFIX} {{")
        return i >= 0 and "AdvPreferredLifetime 0;" in text[i : text.find("};", i)]

    box.wait_for(old_prefix_deprecated)
    box.wait_for(lambda: any(a in NEW for a in global_addrs(box, "client", "eth0")), timeout=10)
    assert not sandbox_refusals(box, "netmux-dhcpcd.service")
