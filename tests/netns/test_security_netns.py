"""Neighbours attacking each other through the phonebook, with real parts.

A mux namespace (host0 + gw0 with a documentation prefix and the ULA), a real second
workload (a macvlan on host0, published by root as `netmux up` does), the real phonebookd
(knotd answering `dig`) and a real ipmuxd member: `nobody`, in the ipmuxd socket's group
and in the phonebook's group, running an agent inside `netmux ipmux` (root only in its
own user namespace, with a macvlan from ipmuxd). Each test is one attack and shows that
it is stopped, and that what the member may do still works.
"""

from __future__ import annotations

import resource
import select
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from netmux.phonebook import client
from tests.conftest import RUN, Unprivileged, wait_for
from tests.phonebookfix import PUBLIC, REPO, Stack, nsrun

pytestmark = pytest.mark.netns

NOBODY = 65534
IPMUX_GID = 200000 + int(RUN[1:], 16)  # unnamed, unused: only this run's ipmuxd socket has it
PREFIX = "2001:db8:1::"
VICTIM = f"{PREFIX}15"
MEMBER_OWN = f"{PREFIX}7"
LIMIT_PUBS, LIMIT_CONNS = 2, 6

# The member's side: one line in, one line out. `sh CMD`, `pub LINE` (a publish-socket
# publication, kept open), `close NAME`, `idle N` (connections that never speak), `unidle`.
AGENT = r"""
import socket, subprocess, sys
held, idle = {}, []
for line in sys.stdin:
    op, _, arg = line.rstrip("\n").partition(" ")
    if op == "sh":
        r = subprocess.run(arg, shell=True, capture_output=True, text=True)
        out = f"rc {r.returncode} {r.stderr.strip()}"
    elif op == "pub":
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        s.sendall((arg + "\n").encode())
        out = s.recv(600).decode().strip() or "closed"
        held[arg.split()[0]] = s
    elif op == "close":
        held.pop(arg).close()
        out = "closed"
    elif op == "idle":
        for _ in range(int(arg)):
            s = socket.socket(socket.AF_UNIX)
            s.connect(sys.argv[1])
            idle.append(s)
        out = "idle"
    elif op == "unidle":
        for s in idle:
            s.close()
        idle.clear()
        out = "unidle"
    print(out.replace("\n", " "), flush=True)
"""


class Member:
    """`nobody` in group netmux (for ipmuxd and the phonebook) running AGENT in ipmux."""

    def __init__(
        self, stack: Stack, name: str, unpriv: Unprivileged, kind: str = "macvlan"
    ) -> None:
        daemon_gid = 1  # Debian's group "daemon", the test phonebook's group
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                f"--groups={IPMUX_GID},{daemon_gid}", unpriv.python, "-m", "netmux.cli",
                "--config", str(stack.config), "ipmux", "--kind", kind, name, "--",
                "python3", "-c", AGENT, str(stack.publish_sock)]  # fmt: skip
        self.p = subprocess.Popen(argv, env=unpriv.env(), text=True, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            first = self.do("sh true")
        except BaseException:
            self.close()
            raise
        if first != "rc 0":
            self.close()
            pytest.fail(f"member agent: {first!r} {self.p.communicate()}")

    def do(self, line: str) -> str:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        if not select.select([self.p.stdout], [], [], 30)[0]:  # a bound, not a timing assert
            self.p.kill()
            pytest.fail(f"member agent did not answer {line!r}: {self.p.communicate()}")
        return self.p.stdout.readline().strip()

    def ip(self, *args: str) -> str:
        """`ip` inside the member's namespace, seen from outside (root)."""
        return subprocess.run(["nsenter", f"--net=/proc/{self.p.pid}/ns/net", "ip", *args],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


@pytest.fixture
def lab(
    netns: Callable[[str], str], procs: Callable[..., subprocess.Popen[bytes]]
) -> Iterator[tuple[Stack, str, str]]:
    """(phonebook stack, mux netns, victim netns); ipmuxd runs on the stack's config."""
    mux = netns("mux")
    for cmd in (
        "link add host0 type veth peer name host0p",
        "link set host0 up",
        "link set host0p up",
        "link add link host0 name gw0 type macvlan mode bridge",
        "link set gw0 up",
        f"addr add {PREFIX}1/64 dev gw0 nodad",
        "addr add fd64:cafe::1/64 dev gw0 nodad",
    ):
        subprocess.run(["ip", "-n", mux, *cmd.split()], check=True)
    victim = netns("v")
    subprocess.run(["ip", "-n", mux, "link", "add", "link", "host0", "name", f"{RUN}v",
                    "netns", victim, "type", "macvlan", "mode", "bridge"], check=True)  # fmt: skip
    subprocess.run(["ip", "-n", victim, "link", "set", f"{RUN}v", "name", "eth0", "up"], check=True)
    subprocess.run(["ip", "-n", victim, "addr", "add", f"{VICTIM}/64", "dev", "eth0", "nodad"],
                   check=True)  # fmt: skip
    stack = Stack(
        netns("dns"),
        extra={
            "mux": f'netns = "{mux}"',
            "phonebook": f"user_publications = {LIMIT_PUBS}\nuser_connections = {LIMIT_CONNS}",
            "ipmux": f'group = "{IPMUX_GID}"',
        },
    )
    try:
        text = stack.config.read_text()
        sock = stack.dir / "ipmuxd.sock"
        stack.config.write_text(text.replace("[ipmux]\n", f'[ipmux]\nsocket = "{sock}"\n'))
        procs([sys.executable, "-m", "netmux.ipmuxd", "--config", str(stack.config)], cwd=REPO)
        wait_for(sock.exists, timeout=10)
        yield stack, mux, victim
    finally:
        stack.close()


@pytest.fixture
def member(lab: tuple[Stack, str, str], unprivileged: Unprivileged) -> Iterator[Member]:
    m = Member(lab[0], "mbr", unprivileged)
    try:
        yield m
    finally:
        m.close()


def has(value: str) -> Callable[[str], bool]:
    return lambda ans: value in ans.split()


def publish_victim(stack: Stack, victim: str) -> client.Published:
    """The second workload, published as `netmux up` publishes it (root, its netns)."""
    pub = client.publish(victim, "eth0", victim, address=stack.bus)
    assert pub is not None, stack.log()
    stack.wait_dig(f"{victim}.{PUBLIC}", has(VICTIM))
    return pub


def settled(m: Member) -> bool:
    return "tentative" not in m.ip("-6", "addr", "show", "dev", "eth0")


def test_names_of_workloads_cannot_be_squatted(lab: tuple[Stack, str, str], member: Member) -> None:
    stack, _, victim = lab
    # The attack as reported: a name and an interface that does not even exist.
    assert "does not exist" in member.do(f"pub {victim}x nosuchif0")
    # A running workload's name (its netns exists), and a configured one (its .toml).
    assert "reserved" in member.do(f"pub {victim} eth0")
    (stack.dir / "workloads").mkdir()
    (stack.dir / "workloads" / "sx-w3.toml").write_text("")
    assert "reserved" in member.do("pub sx-w3 eth0")
    # A name taken before its workload existed goes back to the workload when it starts.
    late = f"{RUN}late"
    assert member.do(f"pub {late} eth0").startswith(f"ok {late}.{PUBLIC}."), stack.log()
    subprocess.run(["ip", "netns", "add", late], check=True)
    try:
        subprocess.run(["ip", "-n", late, "link", "add", "eth0", "type", "veth", "peer", "name",
                        "eth1"], check=True)  # fmt: skip
        pub = client.publish(late, "eth0", late, address=stack.bus)
        assert pub is not None and f"{late}.{PUBLIC}." in pub.names
        assert f"name reserved for workload {late}" in stack.log()
        client.close(pub)
    finally:
        subprocess.run(["ip", "netns", "del", late], check=True)


def test_forged_devices_and_addresses_are_not_published(
    lab: tuple[Stack, str, str], member: Member
) -> None:
    stack, _, victim = lab
    vpub = publish_victim(stack, victim)
    # A veth of its own, with the victim's address: refused outright.
    for cmd in ("ip link add fk0 type veth peer name fk1", "ip link set fk1 up",
                "ip link set fk0 up", f"ip addr add {VICTIM}/64 dev fk0 nodad"):  # fmt: skip
        assert member.do(f"sh {cmd}") == "rc 0"
    assert "not made by netmux or ipmuxd" in member.do("pub forger fk0")
    # Its ipmuxd macvlan, with forged addresses besides one of its own.
    for a in (f"{VICTIM}/64 dev eth0 nodad", "fd64:cafe::53/64 dev eth0 nodad",
              "192.0.2.7/24 dev eth0", "2001:db8:99::7/64 dev eth0"):  # fmt: skip
        assert member.do(f"sh ip addr add {a}") == "rc 0"
    assert member.do("pub forger eth0").startswith(f"ok forger.{PUBLIC}."), stack.log()
    wait_for(lambda: settled(member), timeout=10)  # DAD done for 2001:db8:99::7
    # Its own address, with DAD, comes last: once DNS has it, everything before was seen.
    assert member.do(f"sh ip addr add {MEMBER_OWN}/64 dev eth0") == "rc 0"
    stack.wait_dig(f"forger.{PUBLIC}", has(MEMBER_OWN), timeout=10)
    assert stack.dig(f"forger.{PUBLIC}") == MEMBER_OWN
    assert stack.dig("forger.internal") == ""
    assert stack.dig(f"forger.{PUBLIC}", "A") == ""
    ptr = nsrun(stack.ns, ["dig", "+short", "@::1", "-x", VICTIM]).stdout.split()
    assert ptr == [f"{victim}.{PUBLIC}."]
    client.close(vpub)


def test_member_cannot_name_a_unit(lab: tuple[Stack, str, str], member: Member) -> None:
    """unit= (the warm launcher's worker naming the unit it works for) is root's alone: a
    member cannot tie its record to another unit's life, or a workload's to its own."""
    stack, _, victim = lab
    for line in (f"unit=netmux@{victim}.service squat eth0", "netns=x unit=y.service sq eth0"):
        out = member.do(f"pub {line}")
        assert not out.startswith("ok") and "root" in out, out
    assert stack.dig("squat.internal") == "" and stack.dig(f"squat.{PUBLIC}") == ""


def test_dbus_member_cannot_name_a_namespace(
    lab: tuple[Stack, str, str], unprivileged: Unprivileged
) -> None:
    stack, mux, _ = lab
    code = (
        "import sys\nfrom netmux.phonebook import client\n"
        "try:\n    client.publish('gwspoof', 'gw0', sys.argv[1], address=sys.argv[2])\n"
        "except Exception as e:\n    print(e)\n"
    )
    out = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", "--regid=nogroup", "--groups=daemon", unprivileged.python,
         "-c", code, mux, stack.bus],
        capture_output=True, text=True, timeout=20, cwd="/", env=unprivileged.env(),
    )  # fmt: skip
    assert "only root may name a namespace" in out.stdout, out
    assert stack.dig("gwspoof.internal") == "" and stack.dig(f"gwspoof.{PUBLIC}") == ""


def test_no_one_joins_another_users_publication(lab: tuple[Stack, str, str]) -> None:
    """A process of another user inside the workload's namespace (a workload whose service
    runs as nobody, say) cannot add a lifeline to root's record and keep it alive."""
    stack, _, victim = lab
    pub = client.publish("svc", "eth0", victim, address=stack.bus)  # root, not a netns name
    assert pub is not None
    stack.wait_dig(f"svc.{PUBLIC}", has(VICTIM))
    code = (
        "import socket,sys\ns=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "s.sendall(sys.argv[2].encode()); print(s.recv(600).decode().strip())\n"
    )
    out = nsrun(victim, ["setpriv", f"--reuid={NOBODY}", "--regid=nogroup", "--groups=daemon",
                         "/usr/bin/python3", "-c", code, str(stack.publish_sock), "svc eth0\n"],
                timeout=20)  # fmt: skip
    assert "published by uid 0" in out.stdout, out
    client.close(pub)  # root lets go: nothing else holds it
    stack.wait_dig(f"svc.{PUBLIC}", lambda a: a == "")


def test_limits_per_user(lab: tuple[Stack, str, str], member: Member) -> None:
    stack, _, _ = lab
    for i in range(LIMIT_PUBS):
        assert member.do(f"pub lim{i} eth0").startswith("ok "), stack.log()
    assert f"at most {LIMIT_PUBS} per user" in member.do("pub lim9 eth0")
    member.do("close lim1")
    # Lifelines and silent connections count together: 1 + 5 idle fill the 6.
    assert member.do(f"idle {LIMIT_CONNS - 1}") == "idle"
    assert f"at most {LIMIT_CONNS} per user" in member.do("pub lim1 eth0")
    member.do("unidle")
    wait_for(lambda: member.do("pub lim1 eth0").startswith("ok "), timeout=10)


def test_publish_socket_survives_fd_exhaustion(lab: tuple[Stack, str, str]) -> None:
    stack, _, victim = lab
    assert stack.pbd is not None
    pid = stack.pbd.pid
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (120, 120))
    idle: list[socket.socket] = []
    try:
        for _ in range(150):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(stack.publish_sock))  # the listen backlog takes what is not accepted
            idle.append(s)
        wait_for(lambda: "out of file descriptors" in stack.log(), timeout=10)
    finally:
        for s in idle:
            s.close()
    # Descriptors are free again: the socket serves (a root caller, the victim's namespace).
    code = (
        "import socket,sys\ns=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "s.sendall(sys.argv[2].encode()); print(s.recv(600).decode().strip())\n"
    )

    def served() -> bool:
        out = nsrun(victim, ["python3", "-c", code, str(stack.publish_sock), f"{victim} eth0\n"],
                    timeout=20)  # fmt: skip
        return out.stdout.startswith("ok ")

    wait_for(served, timeout=20, step=0.2)
    assert "accepting again" in stack.log()
