"""Lease lifetimes and flash renumbering with the real lab: kea delegates, dhcpcd's hook
renders radvd, and a workload's kernel shows what it was told (`ip -6 addr`)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from netmux import config, lab, workload
from netmux.config import HostConfig
from netmux.lab import supervise, upstream
from tests.conftest import RUN

pytestmark = [
    pytest.mark.netns,
    pytest.mark.requires("kea-dhcp6", "dhcpcd", "radvd", "unbound"),
]


Up = Callable[[HostConfig, str], str]


def lab_config(tmp: Path, tag: str, lab_extra: str = "", extra: str = "") -> HostConfig:
    path = tmp / "netmux.toml"
    path.write_text(
        f'[mux]\nnetns = "{RUN}{tag}mx"\nuplinks = ["{RUN}{tag}u*"]\n'
        f'[lab]\nrouter_netns = "{RUN}{tag}rt"\nuplink = "{RUN}{tag}u0"\n{lab_extra}'
        "[nat64]\nenabled = false\n"
        f'[paths]\nstate_dir = "{tmp}/state"\nrun_dir = "{tmp}/run"\n'
        f'workloads_dir = "{tmp}/workloads"\n' + extra
    )
    return config.load_host(path)


@contextlib.contextmanager
def running_lab(host: HostConfig) -> Iterator[HostConfig]:
    try:
        lab.up(host)
        yield host
    finally:
        for name in workload.known(host):
            workload.down(host, name)
        lab.down(host)


@pytest.fixture
def longlab(tmp_path: Path) -> Iterator[HostConfig]:
    """The lab's default lease (7200/14400 s): longer than both caps. Per test: a flash
    renumbering restarts kea, a process the next test's leak check would not know."""
    with running_lab(lab_config(tmp_path, "l")) as host:
        yield host


def addrs(netns: str, ifname: str, prefix: IPv6Network) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "-6", "addr", "show", "dev", ifname, "scope", "global"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    found = [a for link in json.loads(out) for a in link.get("addr_info", []) if "local" in a]
    return [a for a in found if IPv6Address(str(a["local"])) in prefix]


def wait_for(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)
    return got


@pytest.fixture
def up() -> Iterator[Callable[[HostConfig, str], str]]:
    """Start a workload in a lab; every one started is brought down after the test."""
    started: list[tuple[HostConfig, str]] = []

    def start(host: HostConfig, suffix: str) -> str:
        name = f"{RUN}{suffix}"
        started.append((host, name))
        assert workload.up(host, config.workload_from(name), exec_cmd=False) == 0
        return name

    try:
        yield start
    finally:
        for host, name in started:
            workload.down(host, name)


def test_a_long_lease_reaches_workloads_capped_at_2700_5400(longlab: HostConfig, up: Up) -> None:
    host = longlab
    w = up(host, "cap")
    (a,) = wait_for("an address in the lab's prefix", lambda: addrs(w, "eth0", host.lab.prefix), 5)  # type: ignore[misc]
    assert 2600 < int(a["preferred_life_time"]) <= 2700, a  # type: ignore[call-overload]
    assert 5300 < int(a["valid_life_time"]) <= 5400, a  # type: ignore[call-overload]
    # gw0 holds the lease itself (dhcpcd sets its lifetimes from kea's 7200/14400)
    (g,) = addrs(host.mux.netns, host.mux.gateway, host.lab.prefix)
    assert int(g["valid_life_time"]) > 5400  # type: ignore[call-overload]
    # the ULA keeps long lifetimes
    (u,) = addrs(w, "eth0", host.mux.ula.network)
    assert int(u["valid_life_time"]) == 86400 or int(u["valid_life_time"]) > 86000  # type: ignore[call-overload]


def test_flash_renumbering_readdresses_a_running_workload(longlab: HostConfig, up: Up) -> None:
    """`netmux lab renumber`: kea restarts without its leases and delegates the next /64
    (no release). dhcpcd learns it at its next renewal (the lab's 2 s renew timer); the
    old prefix is advertised with preferred 0 at once, and the kernel keeps it valid (its
    RFC 4862 2-hour rule ignores the advertised valid 0)."""
    host = longlab
    run = lab.daemon_dir(host)
    old = host.lab.prefix
    new = IPv6Network("2001:db8:0:2::/64")
    w = up(host, "fl")
    wait_for("the old prefix on the workload", lambda: addrs(w, "eth0", old), 5)
    cli = [sys.executable, "-m", "netmux.cli", "--config", host.source, "lab", "renumber"]
    r = subprocess.run(cli, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{new} on {host.mux.netns}/{host.mux.gateway} after ")
    wait_for(
        "the new prefix preferred and the old deprecated on the workload",
        lambda: (
            [a for a in addrs(w, "eth0", new) if a.get("preferred_life_time")]
            and all(a.get("preferred_life_time") == 0 for a in addrs(w, "eth0", old))
        ),
        10,
    )
    assert not addrs(host.mux.netns, host.mux.gateway, old)  # dhcpcd dropped the lease
    (n,) = addrs(w, "eth0", new)
    assert int(n["preferred_life_time"]) <= 2700  # type: ignore[call-overload]
    conf = (run / "radvd.conf").read_text()
    gone = conf[conf.index(f"prefix {old} {{") :]
    assert "AdvValidLifetime 0;" in gone.split("};")[0]
    assert supervise.status("kea6", run) is not None
    log = (run / "dhcpcd.log").read_text()
    assert f"prefix {old} left {host.mux.gateway}" in log
    assert f"renumbered: {old} -> {new} on {host.mux.gateway}" in log  # one event
    assert log.count("renumbered: ") == 1
    # `netmux status` shows the new prefix with its lifetimes, and the old one deprecated
    st = subprocess.run([*cli[:-2], "status", "--json"], capture_output=True, text=True)
    assert st.returncode == 0, st.stderr
    pre = json.loads(st.stdout)["prefixes"]
    assert [c["prefix"] for c in pre["current"]] == [str(new)]
    assert 0 < pre["current"][0]["valid_seconds"] <= 14400
    assert [p["prefix"] for p in pre["previous"]] == [str(old)]
    text = subprocess.run([*cli[:-2], "status"], capture_output=True, text=True).stdout
    assert f"prefix {new}: preferred " in text and f"previous {old}: deprecated " in text
    # a prefix that is not a /64, or the current one: one line, exit 2
    r = subprocess.run([*cli, str(new)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr


def test_a_short_lease_is_advertised_as_it_remains_and_expires_with_an_unreachable_router(
    tmp_path: Path, up: Up
) -> None:
    """A lease shorter than the caps is advertised with its own remaining lifetimes,
    counted down by radvd and restarted at each renewal; when the router stops answering,
    the workload's address expires with the lease, and so does gw0's."""
    extra = "pd_preferred_lifetime = 8\npd_valid_lifetime = 12\n"
    with running_lab(lab_config(tmp_path, "s", extra)) as host:
        w = up(host, "sh")
        p = host.lab.prefix
        (a,) = wait_for("an address in the lab's prefix", lambda: addrs(w, "eth0", p), 5)  # type: ignore[misc]
        assert 0 < int(a["valid_life_time"]) <= 12 + 1, a  # type: ignore[call-overload]
        assert int(a["preferred_life_time"]) <= 8 + 1, a  # type: ignore[call-overload]
        # renewals (every 2 s) keep it: each one re-renders radvd.conf (a new file) and
        # restarts radvd's countdown; seven of them outlast the 12 s valid lifetime
        conf = lab.daemon_dir(host) / "radvd.conf"
        seen = {conf.stat().st_ino}

        def reloads() -> bool:
            with contextlib.suppress(OSError):
                seen.add(conf.stat().st_ino)
            return len(seen) > 7

        wait_for("seven re-rendered radvd.conf", reloads, 30)
        assert addrs(w, "eth0", p)
        supervise.stop("kea6", lab.daemon_dir(host))  # the router stops answering
        wait_for("the workload's address to expire", lambda: not addrs(w, "eth0", p), 12 + 10)
        gw = host.mux.gateway
        wait_for("gw0's lease to expire", lambda: not addrs(host.mux.netns, gw, p), 5)


def dig_short(netns: str, server: str, qname: str) -> list[str]:
    r = subprocess.run(["ip", "netns", "exec", netns, "dig", "+short", "+time=1", "+tries=2",
                        f"@{server}", qname, "AAAA"], capture_output=True, text=True)  # fmt: skip
    return r.stdout.split()


@pytest.mark.requires("knotd", "dig", "dbus-daemon")
def test_the_internet_resolves_through_a_delegation_that_follows_a_flash_renumbering(
    tmp_path: Path, up: Up
) -> None:
    """The whole chain, no manual step: the DNS workload runs Knot and phonebookd (with
    [delegation]), phonebookd publishes a web workload in the host zone and the DNS
    workload's own address as the parent's glue; the lab's internet resolves
    web.HOST.DOMAIN through the lab's public DNS (the parent) before and after the router
    reboots with another prefix."""
    from tests.phonebookfix import DOMAIN, HOST, PUBLIC, Stack

    key = tmp_path / "run" / "lab" / "public-dns" / "delegation.key"
    with running_lab(
        lab_config(tmp_path, "d", extra=f'[dns]\nhostname = "{HOST}"\ndomain = "{DOMAIN}"\n')
    ) as host:
        rt, resolver = host.lab.router_netns, str(upstream.DNS6.ip)
        dns = f"{RUN}dns"
        assert workload.up(host, config.workload_from(dns, {"ports": ["udp/53", "tcp/53"]}),
                           exec_cmd=False) == 0  # fmt: skip
        web = up(host, "web")
        from netmux.phonebook import client

        delegation_conf = f'server = "{upstream.PUBLIC_DNS.ip}"\ntsig_key = "{key}"\nttl = 1\n'
        stack = Stack(dns, extra={"delegation": delegation_conf}, listen=("::",))
        try:
            pubs = [
                client.publish("dns", "eth0", dns, (), address=stack.bus),
                client.publish("web", "eth0", web, (), address=stack.bus),
            ]
            assert all(pubs), stack.log()
            name, ns_name = f"web.{PUBLIC}", f"dns.{PUBLIC}"

            def preferred(ns: str, prefix: IPv6Network) -> list[str]:
                return [str(x["local"]) for x in addrs(ns, "eth0", prefix)
                        if x.get("preferred_life_time")]  # fmt: skip

            def glue() -> list[str]:
                out = subprocess.run(
                    ["ip", "netns", "exec", rt, "dig", "+norec", f"@{upstream.PUBLIC_DNS.ip}",
                     ns_name, "AAAA"], capture_output=True, text=True).stdout  # fmt: skip
                return [ln.split()[-1] for ln in out.splitlines()
                        if ln.startswith(ns_name + ".") and "\tAAAA\t" in ln]  # fmt: skip

            old = host.lab.prefix
            wait_for("the parent's glue", lambda: glue() == preferred(dns, old), 20)
            (old_web,) = wait_for("web's address", lambda: preferred(web, old), 10)  # type: ignore[misc]
            wait_for("web through the delegation",
                     lambda: dig_short(rt, resolver, name) == [old_web], 20)  # fmt: skip
            t0 = time.monotonic()
            p = upstream.flash_renumber(host, lab.daemon_dir(host))
            new = p.delegated
            (new_dns,) = wait_for("the DNS workload's new address", lambda: preferred(dns, new), 10)  # type: ignore[misc]
            wait_for("the parent's new glue", lambda: glue() == [new_dns], 20)
            t_glue = time.monotonic() - t0
            (new_web,) = wait_for("web's new address", lambda: preferred(web, new), 10)  # type: ignore[misc]
            wait_for("web's new address through the delegation",
                     lambda: dig_short(rt, resolver, name) == [new_web], 30)  # fmt: skip
            t_dns = time.monotonic() - t0
            print(f"\nflash renumbering: new glue in the parent {t_glue:.3f}s, new AAAA "
                  f"answered through the delegation {t_dns:.3f}s after the reboot")  # fmt: skip
            assert "delegation: " in stack.log() and "acknowledged by" in stack.log()
            for pub in pubs:
                client.close(pub)
        finally:
            stack.close()


@pytest.mark.requires("knotd", "dig", "dbus-daemon")
def test_an_unreachable_router_withdraws_the_prefix_from_dns(
    tmp_path: Path, up: Up, netns: Callable[[str], str]
) -> None:
    """A lab workload published by a real phonebookd (Knot via RFC 2136): when the router
    stops answering, the short lease runs out, the workload's address is deprecated and
    expires with it, and its AAAA record goes."""
    from netmux.phonebook import client
    from tests.phonebookfix import PUBLIC, Stack

    extra = "pd_preferred_lifetime = 8\npd_valid_lifetime = 12\n"
    with running_lab(lab_config(tmp_path, "u", extra)) as host:
        w = up(host, "pb")
        p = host.lab.prefix
        (a,) = wait_for("an address in the lab's prefix", lambda: addrs(w, "eth0", p), 5)  # type: ignore[misc]
        stack = Stack(netns("dns"))
        try:
            pub = client.publish("web", "eth0", w, (), address=stack.bus)
            assert pub is not None, stack.log()
            stack.wait_dig(f"web.{PUBLIC}", lambda ans: str(a["local"]) in ans.split(), timeout=10)
            supervise.stop("kea6", lab.daemon_dir(host))  # the router stops answering
            stack.wait_dig(f"web.{PUBLIC}", lambda ans: ans == "", timeout=12 + 10)
            wait_for("the workload's address to expire", lambda: not addrs(w, "eth0", p), 12 + 10)
            client.close(pub)
        finally:
            stack.close()
