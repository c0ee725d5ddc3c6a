"""The derived secret and MAC are accepted by the real kernel, in a real namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux import links, names, nsutil

pytestmark = pytest.mark.netns


def test_secret_and_mac_are_accepted_by_the_kernel(netns: Callable[[str], str]) -> None:
    ns = netns("k")
    key = bytes(range(32))
    subprocess.run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "add", "mv0", "link", "br0", "type", "macvlan",
                    "mode", "bridge"], check=True)  # fmt: skip
    assert nsutil.read_sysctl(ns, "net.ipv6.conf.mv0.stable_secret") is None  # EIO: unset
    secret = names.stable_secret(key, "httpd")
    nsutil.write_sysctls(ns, [("net.ipv6.conf.mv0.stable_secret", secret)])
    assert nsutil.read_sysctl(ns, "net.ipv6.conf.mv0.stable_secret") == secret
    assert nsutil.read_sysctl(ns, "net.ipv6.conf.mv0.addr_gen_mode") == "2"
    mac = names.stable_mac(key, "httpd")
    subprocess.run(["ip", "-n", ns, "link", "set", "mv0", "address", mac], check=True)
    out = subprocess.run(["ip", "-n", ns, "-br", "link", "show", "mv0"], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    assert mac in out


def test_predicted_link_local_is_the_kernels(netns: Callable[[str], str]) -> None:
    """names.stable_privacy_address (which pins the addresses in tests/unit/test_names.py) is
    what the kernel makes for a macvlan created the way netmux creates workload links."""
    ns = netns("p")
    key = bytes(range(32))
    mac, secret = names.stable_mac(key, "httpd"), names.stable_secret(key, "httpd")
    with links.iproute(ns) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        links.create_child_link(ipr, "br0", "mv0", mac)
        nsutil.write_sysctls(ns, links.workload_sysctls("mv0", secret, False, 100))
        links.set_up(ipr, "br0")
        links.set_up(ipr, "mv0")
        got = {str(a.address) for a in links.link_state(ipr, "mv0").link_local}
    assert got == {str(names.stable_privacy_address(secret, "fe80::/64"))}


def test_run_in_netns_sees_only_that_namespace(netns: Callable[[str], str]) -> None:
    import os

    ns = netns("v")
    inside = nsutil.run_in_netns(ns, lambda: sorted(os.listdir("/sys/class/net")))
    # /sys is the caller's mount; /proc/thread-self/net is the thread's namespace.
    devs = nsutil.run_in_netns(ns, lambda: Path("/proc/thread-self/net/dev").read_text())
    assert "lo:" in devs and "eth0" not in devs
    assert inside  # the call returned a value from the thread
