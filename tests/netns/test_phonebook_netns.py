"""phonebookd for real: knotd and tinydns answer `dig`, D-Bus via a private dbus-daemon.

No timing assertions: the latencies are printed (`-s`) and their budget (1.2 s) is
measured in bench/phonebook.py; waits have generous timeouts that only bound a hang.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux.errors import StateError
from netmux.phonebook import client
from tests import phonebookfix
from tests.conftest import require, wait_for
from tests.phonebookfix import PUBLIC, SETTLE_TIMEOUT, Stack, add_workload_link, addr, nsrun

pytestmark = pytest.mark.netns

G1, G2, ULA = "2001:db8:1::15", "2001:db8:1::99", "fd64:cafe::15"
HANG = 15.0  # seconds: bounds a hang, never a budget (bench/phonebook.py measures those)


stack = phonebookfix.stack


@pytest.fixture
def wl(netns: Callable[[str], str]) -> str:
    ns = netns("w")
    add_workload_link(ns)
    return ns


def has(value: str) -> Callable[[str], bool]:
    return lambda ans: value in ans.split()


def empty(ans: str) -> bool:
    return ans == ""


def publish(stack: Stack, name: str, ns: str, aliases: tuple[str, ...] = ()) -> client.Published:
    pub = client.publish(name, "eth0", ns, aliases, address=stack.bus)
    assert pub is not None, stack.log()
    return pub


def test_address_to_dns_knot_and_tinydns(stack: Stack, wl: str) -> None:
    pub = publish(stack, "httpd", wl, ("www",))
    assert set(pub.names) == {
        f"httpd.{PUBLIC}.",
        f"www.{PUBLIC}.",
        "httpd.internal.",
        "www.internal.",
    }
    # DAD runs: the address is tentative for ~1 s and must not be published meanwhile.
    addr(wl, "add", f"{G1}/64")
    addr(wl, "add", f"{ULA}/64", "nodad")
    stack.wait_dig("httpd.internal", has(ULA))
    assert stack.dig(f"httpd.{PUBLIC}") == "", "a tentative address was published"
    # The moment DAD ends (flags lose 'tentative') to the answer.
    while "tentative" in nsrun(wl, ["ip", "-6", "addr", "show", "dev", "eth0"]).stdout:
        time.sleep(0.005)
    latency = stack.wait_dig(f"httpd.{PUBLIC}", has(G1))
    print(f"\naddress usable -> knot answers: {latency:.3f}s (the budget: bench/phonebook.py)")
    assert stack.dig(f"www.{PUBLIC}") == G1
    assert nsrun(stack.ns, ["dig", "+short", "@::1", "-x", G1]).stdout.strip() == f"httpd.{PUBLIC}."
    if stack.want_tinydns:
        t = stack.wait_dig(f"httpd.{PUBLIC}", has(G1), server="127.0.0.1")
        print(f"tinydns answers {t:.3f}s after knot")
        assert stack.dig("www.internal", server="127.0.0.1") == ULA
        data = (stack.tinydns_dir / "data").read_text()
        assert f":httpd.{PUBLIC}:28:" in data and "Zinternal:" in data
    client.close(pub)
    stack.wait_dig(f"httpd.{PUBLIC}", empty, timeout=HANG)
    stack.wait_dig("httpd.internal", empty, timeout=HANG)


def test_publish_returns_once_every_sink_serves_the_record(stack: Stack, wl: str) -> None:
    """Ready means resolvable: no waiting after Publish returns, on either sink."""
    addr(wl, "add", f"{G1}/64", "nodad")
    pub = publish(stack, "ready", wl)
    assert stack.dig(f"ready.{PUBLIC}") == G1
    if stack.want_tinydns:
        assert stack.dig(f"ready.{PUBLIC}", server="127.0.0.1") == G1
    client.close(pub)
    stack.wait_dig(f"ready.{PUBLIC}", empty)


def test_a_sink_that_does_not_answer_fails_the_publish_naming_it(stack: Stack, wl: str) -> None:
    addr(wl, "add", f"{G1}/64", "nodad")
    knotd = stack.procs[0]  # nsenter execs knotd
    assert Path(f"/proc/{knotd.pid}/comm").read_text().strip() == "knotd"
    os.kill(knotd.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StateError, match=r"DNS sink rfc2136 at ::1 did not take the record"):
            client.publish("late", "eth0", wl, address=stack.bus, timeout=SETTLE_TIMEOUT + 2)
        # Knot's own workload (the server's address is its own) is not held up by Knot.
        own = client.publish("dns", "lo", stack.ns, address=stack.bus, timeout=SETTLE_TIMEOUT + 2)
        assert own is not None
        client.close(own)
    finally:
        os.kill(knotd.pid, signal.SIGCONT)
    stack.wait_dig(f"late.{PUBLIC}", empty, timeout=15)  # the lifeline closed with the failure
    pub = publish(stack, "late", wl)  # and Knot catches up
    assert stack.dig(f"late.{PUBLIC}") == G1
    client.close(pub)


def test_renumbering_updates_records(stack: Stack, wl: str) -> None:
    pub = publish(stack, "renum", wl)
    addr(wl, "add", f"{G1}/64", "nodad")
    stack.wait_dig(f"renum.{PUBLIC}", has(G1))
    t0 = time.monotonic()
    addr(wl, "add", f"{G2}/64", "nodad")
    addr(wl, "del", f"{G1}/64")
    stack.wait_dig(f"renum.{PUBLIC}", lambda a: a == G2)
    print(f"\nrenumbered in {time.monotonic() - t0:.3f}s")
    # IPv4 addresses become A records (documentation range: the public zone).
    addr(wl, "add", "192.0.2.15/24")
    stack.wait_dig(f"renum.{PUBLIC}", has("192.0.2.15"), rtype="A")
    # A deprecated address (preferred_lft 0) is not published any more.
    addr(wl, "change", f"{G2}/64", "preferred_lft", "0")
    stack.wait_dig(f"renum.{PUBLIC}", empty)
    client.close(pub)


def test_kill9_of_every_holder_removes_the_record(stack: Stack, wl: str) -> None:
    pub = publish(stack, "held", wl)
    addr(wl, "add", f"{G1}/64", "nodad")
    holders = [
        subprocess.Popen(["sleep", "60"], pass_fds=(pub.lifeline,)),
        subprocess.Popen(["sleep", "60"], pass_fds=(pub.lifeline,)),
    ]
    try:
        client.close(pub)  # only the holders keep it now
        stack.wait_dig(f"held.{PUBLIC}", has(G1))
        holders[0].kill()
        holders[0].wait()
        # Had that closed the lifeline, phonebookd would have dropped the record before it
        # handles a later publication, and the sinks removed it before they add the later.
        later = publish(stack, "later", wl)
        stack.wait_dig(f"later.{PUBLIC}", has(G1))
        client.close(later)
        assert stack.dig(f"held.{PUBLIC}") == G1, "one holder is still alive"
        t0 = time.monotonic()
        holders[1].send_signal(signal.SIGKILL)
        holders[1].wait()
        stack.wait_dig(f"held.{PUBLIC}", empty, timeout=HANG)
        print(f"\nkill -9 -> record gone in {time.monotonic() - t0:.3f}s")
    finally:
        for h in holders:
            if h.poll() is None:
                h.kill()
                h.wait()


def test_name_taken_and_bad_arguments(stack: Stack, wl: str, netns: Callable[[str], str]) -> None:
    pub = publish(stack, "owned", wl)
    other = netns("o")
    add_workload_link(other)
    with pytest.raises(Exception, match="already published"):
        client.publish("owned", "eth0", other, address=stack.bus)
    with pytest.raises(Exception, match="already published"):
        client.publish("thief", "eth0", other, ("owned",), address=stack.bus)
    # The same workload publishing again adds a lifeline (a reference), not an error.
    again = publish(stack, "owned", wl)
    for bad in ("Bad", "a:b", "x\ny", "a.b", "-x", "all"):
        with pytest.raises(Exception, match=r"not allowed|reserved"):
            client.publish(bad, "eth0", wl, address=stack.bus)
    with pytest.raises(Exception, match="not allowed"):
        client.publish("good", "eth0:1\n", wl, address=stack.bus)
    with pytest.raises(Exception, match="not allowed"):
        client.publish("good", "eth0", "../etc", address=stack.bus)
    with pytest.raises(Exception, match="netns"):
        client.publish("good", "eth0", "nosuchns", address=stack.bus)
    assert [r for r in client.records(stack.bus) if "good" in r[0] or "thief" in r[0]] == []
    # The namespace is re-created under the same name (a new instance of the workload)
    # while the old lifelines are still held: the new instance gets the name.
    subprocess.run(["ip", "netns", "del", wl], check=True)
    subprocess.run(["ip", "netns", "add", wl], check=True)
    add_workload_link(wl)
    addr(wl, "add", f"{G2}/64", "nodad")
    renewed = publish(stack, "owned", wl)
    stack.wait_dig(f"owned.{PUBLIC}", lambda a: a == G2)
    assert "re-created" in stack.log()
    for p in (pub, again, renewed):
        client.close(p)


def test_busctl_introspect_call_and_policy(stack: Stack, wl: str) -> None:
    out = stack.busctl("introspect", "org.netmux.Phonebook1", "/org/netmux/Phonebook1")
    assert out.returncode == 0, out.stderr
    for member in ("Publish", "Unpublish", "List", "RecordsChanged", "Rebuilds"):
        assert member in out.stdout
    pub = publish(stack, "bus", wl)
    addr(wl, "add", f"{ULA}/64", "nodad")
    stack.wait_dig("bus.internal", has(ULA))
    call = ["call", "org.netmux.Phonebook1", "/org/netmux/Phonebook1", "org.netmux.Phonebook1"]
    listed = stack.busctl(*call, "List")
    assert listed.returncode == 0 and "bus.internal." in listed.stdout and ULA in listed.stdout
    # (busctl 252 cannot pass a file descriptor: Publish itself is called with dbus-next.)
    # A caller outside root and the group is refused, introspection included.
    for args in (
        ("introspect", "org.netmux.Phonebook1", "/org/netmux/Phonebook1"),
        (*call, "List"),
    ):
        denied = stack.busctl(*args, user="nobody")
        assert denied.returncode != 0
        assert "denied" in denied.stderr.lower() or "access" in denied.stderr.lower()
    # ... and a member of the group is let in (the test policy names group 'daemon').
    allowed = stack.busctl(*call, "List", user="nobody", groups="daemon")
    assert allowed.returncode == 0, allowed.stderr
    # ... but may not remove what another uid published.
    other = stack.busctl(*call, "Unpublish", "s", "bus", user="nobody", groups="daemon")
    assert other.returncode != 0 and "published by uid 0" in other.stderr, other
    assert stack.busctl(*call, "Unpublish", "s", "bus").stdout.strip() == "b true"
    stack.wait_dig("bus.internal", empty)
    client.close(pub)


def test_seed_protocol(stack: Stack, wl: str) -> None:
    addr(wl, "add", f"{G1}/64", "nodad")
    script = (
        "import socket,sys,time\n"
        "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode())\n"
        "print(s.recv(300).decode(), flush=True); sys.stdin.read()\n"
    )
    p = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            wl,
            "python3",
            "-c",
            script,
            str(stack.publish_sock),
            "seed eth0\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith("ok ") and f"seed.{PUBLIC}." in line, line
        stack.wait_dig(f"seed.{PUBLIC}", has(G1))
    finally:
        assert p.stdin is not None
        p.stdin.close()  # the client exits: its connection (the reference) closes
        p.wait()
    stack.wait_dig(f"seed.{PUBLIC}", empty)
    # Malformed requests are refused with a one-line error and publish nothing.
    for bad in (b"x\n", b"a:b eth0\n", b"ok eth0 x\\y\n", b"a eth0\nb eth0\n", b"\xff eth0\n"):
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.connect(str(stack.publish_sock))
        s.sendall(bad)
        ans = s.recv(300)
        s.close()
        assert ans.startswith(b"error "), (bad, ans)
    # nobody (not in the group) is refused
    out = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3", "-c",
         script.replace("sys.stdin.read()", ""), str(stack.publish_sock), "nob eth0\n"],
        text=True, capture_output=True, timeout=10,
    )  # fmt: skip
    # The socket is mode 0660 in the group: connect() itself is refused (else "error ...").
    refused = "PermissionError" in out.stderr or out.stdout.startswith("error ")
    assert refused and "ok" not in out.stdout, out


def test_200_publications_at_most_one_rebuild_a_second(stack: Stack, wl: str) -> None:
    if not stack.want_tinydns:
        require("tinydns")
    addr(wl, "add", f"{ULA}/64", "nodad")
    stack.wait_dig(f"{PUBLIC}", bool, "SOA", server="127.0.0.1")
    before = _rebuilds(stack)
    t0 = time.monotonic()
    pubs = _publish_many(stack, wl, 200)
    stack.wait_dig("p199.internal", has(ULA), server="127.0.0.1", timeout=10)
    elapsed = time.monotonic() - t0
    n = _rebuilds(stack) - before
    print(f"\n200 publications in {elapsed:.2f}s: {n} rebuild(s)")
    assert n <= int(elapsed) + 1
    assert stack.dig("p0.internal", server="127.0.0.1") == ULA
    for fd in pubs:
        os.close(fd)
    stack.wait_dig("p199.internal", empty, server="127.0.0.1", timeout=10)


def _rebuilds(stack: Stack) -> int:
    out = stack.busctl(
        "get-property", "org.netmux.Phonebook1", "/org/netmux/Phonebook1",
        "org.netmux.Phonebook1", "Rebuilds",
    )  # fmt: skip
    m = re.fullmatch(r"t (\d+)", out.stdout.strip())
    assert m, out
    return int(m.group(1))


def _publish_many(stack: Stack, ns: str, n: int) -> list[int]:
    """n Publish calls in flight at once; returns the lifeline write ends."""
    import asyncio

    from dbus_next.aio.message_bus import MessageBus
    from dbus_next.constants import MessageType
    from dbus_next.message import Message

    async def go() -> list[int]:
        # The bus allows 128 pending calls per connection (like the system bus): use four.
        buses = [MessageBus(bus_address=stack.bus, negotiate_unix_fd=True) for _ in range(4)]
        for bus in buses:
            await bus.connect()
        pipes = [os.pipe() for _ in range(n)]
        msgs = [
            Message(
                destination="org.netmux.Phonebook1",
                path="/org/netmux/Phonebook1",
                interface="org.netmux.Phonebook1",
                member="Publish",
                signature="sssh",
                body=[f"p{i}", "eth0", ns, 0],
                unix_fds=[pipes[i][0]],
            )
            for i in range(n)
        ]
        replies = await asyncio.gather(*(buses[i % 4].call(m) for i, m in enumerate(msgs)))
        for bus in buses:
            bus.disconnect()
        for r, _ in pipes:
            os.close(r)
        for rep in replies:
            assert rep is not None and rep.message_type == MessageType.METHOD_RETURN, rep.body
        return [w for _, w in pipes]

    return asyncio.run(go())


def test_restart_keeps_every_record(stack: Stack, wl: str) -> None:
    """The fd store handshake as systemd does it: FDSTORE=1 in, LISTEN_FDS back."""
    addr(wl, "add", f"{G1}/64", "nodad")
    a = publish(stack, "keep", wl)
    b = publish(stack, "gone", wl)
    stack.wait_dig(f"gone.{PUBLIC}", has(G1))
    assert stack.systemd is not None
    names = stack.systemd.names()
    assert any(n.startswith("l.") for n in names) and any(n.startswith("s.") for n in names)
    stack.stop_phonebookd()
    client.close(b)  # closed while phonebookd is down: gone after the restart
    with stack.systemd.lock:
        stored = list(stack.systemd.store)
    stack.start_phonebookd(stored)
    stack.wait_dig(f"gone.{PUBLIC}", empty)
    assert stack.dig(f"keep.{PUBLIC}") == G1
    assert "restored 2 publication" in stack.log()
    # The restored lifeline still works, and so does renumbering of a restored record.
    addr(wl, "add", f"{G2}/64", "nodad")
    addr(wl, "del", f"{G1}/64")
    stack.wait_dig(f"keep.{PUBLIC}", lambda s: s == G2)
    client.close(a)
    stack.wait_dig(f"keep.{PUBLIC}", empty)
    assert not [n for n in stack.systemd.names() if n.startswith(("l.", "s.", "n."))]


def test_fuzzed_dbus_and_seed_payloads_never_reach_the_sinks(stack: Stack, wl: str) -> None:
    """Arbitrary names, aliases, interfaces and namespaces over D-Bus, arbitrary bytes on the
    publish socket: whatever is accepted is a valid name; the data file stays strictly shaped."""
    import socket

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from netmux import names
    from tests.unit.test_phonebook_records import SAFE_LINE

    addr(wl, "add", f"{ULA}/64", "nodad")
    # D-Bus strings cannot hold NUL (the bus drops such a caller), so fuzz without it.
    text = st.one_of(
        st.text(st.characters(blacklist_characters="\x00"), max_size=40),
        st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
    )
    allowed: set[str] = set()
    held: list[int] = []

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        name=text,
        alias=text,
        ifname=st.sampled_from(["eth0", "eth0\n", "e:0", ""]),
        raw=st.binary(max_size=80),
    )
    def fuzz(name: str, alias: str, ifname: str, raw: bytes) -> None:
        try:
            pub = client.publish(name, ifname, wl, (alias,) if alias else (), address=stack.bus)
        except Exception as e:
            assert "not allowed" in str(e) or "reserved" in str(e) or "already" in str(e), e
        else:
            assert pub is not None and names.is_valid_name(name)
            allowed.update([name, alias] if alias else [name])
            held.append(pub.lifeline)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(stack.publish_sock))
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        ans = s.recv(300)
        s.close()
        assert ans.startswith((b"ok ", b"error ")), ans

    try:
        fuzz()
        if stack.want_tinydns:  # a later record in the data: every fuzzed change is in too
            later = publish(stack, "zzlatermark", wl)  # longer than any generated name
            stack.wait_dig("zzlatermark.internal", has(ULA), server="127.0.0.1")
            client.close(later)
            for line in (stack.tinydns_dir / "data").read_text().splitlines():
                assert SAFE_LINE.fullmatch(line), line
        zones = (PUBLIC, "internal")
        for fqdn, rtype, _, _ in client.records(stack.bus):
            if rtype in ("SOA", "NS", "PTR"):
                continue
            label, _, zone = fqdn.rstrip(".").partition(".")
            assert zone in zones and label in allowed, fqdn
        assert allowed, "some valid names were generated and accepted"
    finally:
        for fd in held:
            os.close(fd)


def test_records_changed_signal(stack: Stack, wl: str) -> None:
    """A D-Bus client sees RecordsChanged (with the record count) after a change."""
    import asyncio

    from dbus_next.aio.message_bus import MessageBus
    from dbus_next.constants import MessageType
    from dbus_next.message import Message

    addr(wl, "add", f"{ULA}/64", "nodad")

    async def go() -> list[int]:
        bus = MessageBus(bus_address=stack.bus)
        await bus.connect()
        got: list[int] = []
        seen = asyncio.Event()

        def handler(msg: Message) -> None:
            if msg.message_type == MessageType.SIGNAL and msg.member == "RecordsChanged":
                got.append(msg.body[0])
                seen.set()

        bus.add_message_handler(handler)
        rule = "type='signal',interface='org.netmux.Phonebook1',member='RecordsChanged'"
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[rule],
            )
        )
        pub = await asyncio.to_thread(publish, stack, "sig", wl)
        await asyncio.wait_for(seen.wait(), 5)
        seen.clear()
        client.close(pub)
        await asyncio.wait_for(seen.wait(), 5)
        bus.disconnect()
        return got

    counts = asyncio.run(go())
    assert len(counts) >= 2 and counts[0] > counts[-1], counts


def test_sighup_after_each_rebuild(netns: Callable[[str], str], tmp_path: Path) -> None:
    """The process in sighup_pidfile (a stand-in for shibari) gets SIGHUP per rebuild."""
    import shutil

    if not shutil.which("tinydns-data"):
        require("tinydns-data")
    hups = tmp_path / "hups"
    server = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, sys, time\n"
         "signal.signal(signal.SIGHUP, lambda *a: open(sys.argv[1], 'a').write('hup\\n'))\n"
         "time.sleep(60)\n", str(hups)],
    )  # fmt: skip
    pidfile = tmp_path / "server.pid"
    pidfile.write_text(f"{server.pid}\n")
    wl = netns("w")
    add_workload_link(wl)
    stack = Stack(netns("dns"), sighup_pidfile=str(pidfile))
    try:
        wait_for(lambda: hups.exists())  # the rebuild at start
        first = hups.read_text().count("hup")
        addr(wl, "add", f"{ULA}/64", "nodad")
        pub = publish(stack, "hup", wl)
        wait_for(lambda: hups.read_text().count("hup") > first)
        assert ":hup.internal:28:" in (stack.tinydns_dir / "data").read_text()
        client.close(pub)
    finally:
        stack.close()
        server.kill()
        server.wait()


def test_seed_protocol_group_member(stack: Stack, wl: str) -> None:
    """A caller that is not root but in the configured group is let in, and told in one line
    why its request cannot be verified here (no mux: no device of netmux or ipmuxd to check;
    tests/netns/test_security_netns.py has the member that does publish)."""
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'member eth0\\n')\n"
        "print(s.recv(300).decode())\n"
    )
    out = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--groups=daemon",
         "/usr/bin/python3", "-c", script, str(stack.publish_sock)],
        text=True, capture_output=True, timeout=10,
    )  # fmt: skip
    assert out.stdout.startswith("error mux ") and "not running" in out.stdout, out


@pytest.mark.requires("knotd", "dig")
def test_host_only_zones_are_not_answered_to_the_internet(
    netns: Callable[[str], str], procs: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Real knotd on `::` as the dns recipe runs it: internal. and the ULA reverse zone only
    for host-internal sources, the public zone for everyone."""
    from netmux.config import parse_host
    from netmux.phonebook import knot
    from netmux.phonebook.records import Zones, reverse_zone

    cfg = parse_host('[dns]\nhostname = "box"\ndomain = "example.org"\n')
    zones = Zones.from_config(cfg)
    knot.write_all(knot.KnotSite(zones, tmp_path, ["::"], 53))
    dns, inet = netns("kd"), netns("ki")
    subprocess.run(["ip", "-n", dns, "link", "add", "eth0", "type", "veth", "peer", "name",
                    "eth0", "netns", inet], check=True)  # fmt: skip
    for ns, host in ((dns, "d"), (inet, "99")):
        addr(ns, "add", f"2001:db8:1::{host}/64", "nodad")
        addr(ns, "add", f"fd64:cafe::{host}/64", "nodad")
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
    procs(["ip", "netns", "exec", dns, "knotd", "-c", str(tmp_path / "knot.conf")],
          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def status(name: str, server: str, source: str, tcp: bool = False) -> str:
        argv = ["dig", "+tries=1", "+time=1", "-b", source, f"@{server}", name, "SOA"]
        out = nsrun(inet, argv + (["+tcp"] if tcp else [])).stdout
        m = re.search(r"status: (\w+)", out)
        return (m.group(1) if m else "no answer") + (" answer" if "ANSWER: 1" in out else "")

    ula_rev = reverse_zone(cfg.mux.ula.network)
    wait_for(lambda: status(zones.public, "2001:db8:1::d", "2001:db8:1::99") == "NOERROR answer")
    for tcp in (False, True):
        for zone in ("internal", ula_rev):
            assert status(zone, "fd64:cafe::d", "fd64:cafe::99", tcp) == "NOERROR answer"
            got = status(zone, "2001:db8:1::d", "2001:db8:1::99", tcp)
            assert got in ("REFUSED", "NOTAUTH"), f"{zone} from the internet: {got}"
        assert status(zones.public, "2001:db8:1::d", "2001:db8:1::99", tcp) == "NOERROR answer"
        assert status(zones.public, "fd64:cafe::d", "fd64:cafe::99", tcp) == "NOERROR answer"
