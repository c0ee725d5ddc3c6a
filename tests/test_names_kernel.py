"""The derived secret and MAC are accepted by the real kernel, in a real namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux import names, nsutil

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


def test_run_in_netns_sees_only_that_namespace(netns: Callable[[str], str]) -> None:
    import os

    ns = netns("v")
    inside = nsutil.run_in_netns(ns, lambda: sorted(os.listdir("/sys/class/net")))
    # /sys is the caller's mount; /proc/thread-self/net is the thread's namespace.
    devs = nsutil.run_in_netns(ns, lambda: Path("/proc/thread-self/net/dev").read_text())
    assert "lo:" in devs and "eth0" not in devs
    assert inside  # the call returned a value from the thread
