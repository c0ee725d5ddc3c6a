"""A member's real phonebookd (tests/phonebookfix.py) with the hosts sink: a published
workload reaches the primary's Knot; a clean stop removes it there, a restart brings it
back, and a phonebookd killed without unpublishing (a host switched off) leaves it to the
primary's expiry pass.

    [pbd: knotd of host box, phonebookd] 2001:db8:b::2 --veth-- 2001:db8:b::1 [pri: knotd]
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netmux import hosts, nsutil
from netmux.config import load_host
from netmux.phonebook import client
from tests.hostsfix import B_ADDR, PRI_B, dig, netmux, until, veth
from tests.phonebookfix import PUBLIC, Stack, add_workload_link, addr

G1 = "2001:db8:1::15"
pytestmark = [pytest.mark.netns, pytest.mark.requires("knotd", "knotc", "dig", "dbus-daemon")]


@pytest.fixture
def primary(
    tmp_path: Path,
    netns: Callable[[str], str],
    procs: Callable[..., subprocess.Popen[bytes]],
) -> Iterator[tuple[str, Path]]:
    """Host "a"'s Knot as the primary in its own namespace; returns (netns, its config)."""
    pri = netns("pri")
    kdir = tmp_path / "knot-a"
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        '[dns]\nhostname = "a"\ndomain = "example.org"\nttl = 5\n'
        f'[phonebook]\nserver = "::1"\ntsig_key = "{kdir}/phonebook.key"\n'
        f'[hosts]\nrole = "primary"\ndirectory = "{tmp_path}/hosts"\nlease = 2\n'
        f'[paths]\nstate_dir = "{tmp_path}/state"\n'
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "netmux.phonebook.knot",
            str(kdir),
            "--config",
            str(cfg),
            "--listen",
            "::",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    procs(
        ["ip", "netns", "exec", pri, "knotd", "-c", str(kdir / "knot.conf")],
        stdout=(tmp_path / "knot-a.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    until(
        "the primary answers",
        lambda: "dns.a.example.org." in dig(pri, "::1", "a.example.org", "NS"),
    )
    r = netmux(
        pri,
        cfg,
        "host",
        "add",
        "box",
        "--address",
        PRI_B,
        "--knot-socket",
        str(kdir / "run" / "knot.sock"),
    )
    assert r.returncode == 0, r.stderr
    yield pri, cfg


def test_a_members_phonebookd_publishes_at_the_primary_on_a_lease(
    tmp_path: Path,
    netns: Callable[[str], str],
    uname: Callable[[str], str],
    primary: tuple[str, Path],
) -> None:
    pri, cfg_a = primary
    dns_ns, wl = netns("pbd"), netns("w")
    veth(pri, uname("p"), PRI_B, dns_ns, uname("b"), B_ADDR)
    add_workload_link(wl)
    key = tmp_path / "box" / "host.key"
    member = tmp_path / "box.toml"
    member.write_text(
        f'[dns]\nhostname = "box"\ndomain = "example.org"\n[hosts]\nkey = "{key}"\nlease = 2\n'
    )
    r = netmux(dns_ns, member, "host", "join", str(tmp_path / "hosts" / "box.join"))
    assert r.returncode == 0, r.stderr
    section = f'role = "member"\nprimary = "{PRI_B}"\nkey = "{key}"\nlease = 2\n'
    stack = Stack(dns_ns, sinks=("rfc2136",), tinydns=False, extra={"hosts": section})
    try:
        addr(wl, "add", f"{G1}/64", "nodad")
        pub = client.publish("httpd", "eth0", wl, address=stack.bus)
        assert pub is not None, stack.log()
        until("httpd at the primary", lambda: dig(pri, "::1", f"httpd.{PUBLIC}") == G1)
        assert "hosts" in stack.log()  # "ready (rfc2136, hosts)"

        # A clean stop removes the records at the primary; the restart brings them back.
        assert stack.systemd is not None
        stack.stop_phonebookd()
        assert dig(pri, "::1", f"httpd.{PUBLIC}") == ""
        with stack.systemd.lock:
            stored = list(stack.systemd.store)
        stack.start_phonebookd(stored)
        until("httpd back at the primary", lambda: dig(pri, "::1", f"httpd.{PUBLIC}") == G1)

        # Killed (a host switched off): nothing is removed until the lease lapses.
        stack.stop_phonebookd(signal.SIGKILL)
        assert dig(pri, "::1", f"httpd.{PUBLIC}") == G1
        cfg = load_host(cfg_a)
        until(
            "the expiry pass removes box's records",
            lambda: PUBLIC in nsutil.run_in_netns(pri, lambda: hosts.expire(cfg)),
        )
        assert dig(pri, "::1", f"httpd.{PUBLIC}") == ""
        assert stack.dig(f"httpd.{PUBLIC}") == G1  # box's own Knot still has it
        client.close(pub)
    finally:
        stack.close()
