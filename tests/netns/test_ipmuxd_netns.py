"""ipmuxd for real: unprivileged callers (`nobody`) in `unshare -rn` namespaces.

Access is the socket's group. Tests use a numeric gid that no group in /etc/group names
(derived from the run prefix), so nothing on the host changes: the daemon chowns the
socket to it and the caller gets it as a supplementary group through setpriv.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netmux import config, ipmuxd, names, nsutil
from tests.conftest import RUN, Unprivileged, wait_for

pytestmark = pytest.mark.netns

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
TEST_GID = 200000 + int(RUN[1:], 16)  # unnamed, unused: only this run's socket has it


@dataclass
class Env:
    dir: Path
    cfg: Path
    host: config.HostConfig
    mux: str
    py: Unprivileged  # what `nobody` runs netmux with

    @property
    def sock(self) -> Path:
        return self.host.ipmux.socket

    def client(
        self, name: str, cmd: list[str], groups: bool = True, kind: str = "macvlan", **kw: object
    ) -> subprocess.Popen[str]:
        """`netmux ipmux NAME -- CMD` as nobody (with or without the socket's group)."""
        priv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}"]
        priv += [f"--groups={TEST_GID}"] if groups else ["--clear-groups"]
        argv = [*priv, self.py.python, "-m", "netmux.cli", "--config", str(self.cfg),
                "ipmux", "--kind", kind, name, "--", *cmd]  # fmt: skip
        return subprocess.Popen(
            argv, env=self.py.env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
        )  # type: ignore[call-overload,no-any-return]

    def raw(self, msg: bytes, fds: list[int] = ()) -> dict[str, object]:  # type: ignore[assignment]
        """One request straight on the socket (as root); returns the reply."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(self.sock))
        s.settimeout(5)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        s.sendmsg([msg], anc)
        reply: dict[str, object] = json.loads(s.recv(4096))
        s.close()
        return reply


@pytest.fixture
def env(netns: Callable[[str], str], unprivileged: Unprivileged) -> Iterator[Env]:
    d = Path(tempfile.mkdtemp(prefix=f"{RUN}ipm."))
    d.chmod(0o755)  # nobody must reach the config and the socket's directory
    mux = netns("mux")
    subprocess.run(
        ["ip", "-n", mux, "link", "add", "host0", "type", "veth", "peer", "name", "host0p"],
        check=True,
    )
    for dev in ("host0", "host0p"):
        subprocess.run(["ip", "-n", mux, "link", "set", dev, "up"], check=True)
    cfg = d / "netmux.toml"
    cfg.write_text(
        f'[mux]\nnetns = "{mux}"\n[paths]\nstate_dir = "{d}/state"\nrun_dir = "{d}/run"\n'
        f'[ipmux]\nsocket = "{d}/ipmuxd.sock"\ngroup = "{TEST_GID}"\nquota = 2\n'
    )
    cfg.chmod(0o644)
    try:
        yield Env(d, cfg, config.load_host(cfg), mux, unprivileged)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start_daemon(env: Env, procs: Callable[..., subprocess.Popen[bytes]]) -> None:
    procs([sys.executable, "-m", "netmux.ipmuxd", "--config", str(env.cfg)], cwd=REPO)
    wait_for(env.sock.exists, timeout=10)


@pytest.fixture
def daemon(env: Env, procs: Callable[..., subprocess.Popen[bytes]]) -> Env:
    start_daemon(env, procs)
    return env


def links_in(fd: int) -> dict[str, str]:
    """{ifname: mac} in the namespace behind fd."""

    def read() -> dict[str, str]:
        out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
        return {link["ifname"]: link.get("address", "") for link in json.loads(out.stdout)}

    return nsutil.run_in_netns(fd, read)


def wait_ready(p: subprocess.Popen[str]) -> str:
    assert p.stdout is not None
    line = p.stdout.readline()
    if "ready" not in line:
        p.wait(timeout=10)
        assert p.stderr is not None
        pytest.fail(f"client failed: {line!r} {p.stderr.read()!r}")
    return line


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_group_member_gets_a_device_removed_when_it_goes(daemon: Env, how: str) -> None:
    name = f"{RUN}{how[:3]}"
    p = daemon.client(name, ["sh", "-c", 'echo ready "$NETMUX_IPMUX_FD"; read x'],
                      stdin=subprocess.PIPE)  # fmt: skip
    try:
        line = wait_ready(p)
        assert line.split()[1].isdigit()  # the connection was inherited
        fd = os.open(f"/proc/{p.pid}/ns/net", os.O_RDONLY)
    except BaseException:
        p.kill()
        p.wait()
        raise
    try:
        key = names.load_host_key(daemon.host.paths.host_key, create=False)
        mac, secret = ipmuxd.identity(key, NOBODY, name)
        assert links_in(fd).get("eth0") == mac
        assert nsutil.read_sysctl(fd, "net.ipv6.conf.eth0.stable_secret") == secret
        if how == "sigkill":
            p.kill()
        else:
            assert p.stdin is not None
            p.stdin.close()
        p.wait(timeout=10)
        wait_for(lambda: "eth0" not in links_in(fd), timeout=5)
    finally:
        os.close(fd)
        if p.poll() is None:
            p.kill()
            p.wait()


def test_macvtap_comes_with_its_tap_fd(daemon: Env) -> None:
    """An unprivileged caller cannot mknod the tap device: ipmuxd passes it an open fd."""
    check = (
        "import os, stat, sys; fd = int(os.environ['NETMUX_TAP_FD']); "
        "print('tap', stat.S_ISCHR(os.fstat(fd).st_mode), os.environ['NETMUX_MAC']); "
        "print('args', sys.argv[1] == str(fd), sys.argv[2] == os.environ['NETMUX_MAC'])"
    )
    cmd = [daemon.py.python, "-c", check, "{tapfd}", "{mac}"]  # substituted as by `up --vm`
    p = daemon.client(f"{RUN}vm", ["sh", "-c", 'ip -d link show eth0; exec "$@"', "-", *cmd],
                      kind="macvtap")  # fmt: skip
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    key = names.load_host_key(daemon.host.paths.host_key, create=False)
    assert f"tap True {ipmuxd.identity(key, NOBODY, f'{RUN}vm')[0]}" in out
    assert "macvtap" in out and "args True True" in out
    assert "ALLMULTI" in out  # the guest's solicited-node groups pass the macvtap


def test_outsider_is_refused_by_socket_permissions(daemon: Env) -> None:
    p = daemon.client(f"{RUN}out", ["true"], groups=False)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 1
    assert "permission denied" in err and str(daemon.sock) in err
    st = daemon.sock.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o660, 0, TEST_GID)


def test_quota_per_user(daemon: Env) -> None:
    held = [
        daemon.client(f"{RUN}q{i}", ["sh", "-c", "echo ready; read x"], stdin=subprocess.PIPE)
        for i in range(2)
    ]
    try:
        for p in held:
            wait_ready(p)
        third = daemon.client(f"{RUN}q2", ["true"])
        _, err = third.communicate(timeout=20)
        assert third.returncode == 1 and "quota" in err
    finally:
        for p in held:
            p.kill()
            p.wait()
    # Released on exit: the next one fits again.
    wait_for(lambda: daemon.client(f"{RUN}q3", ["true"]).wait(timeout=20) == 0, timeout=10)


def test_idle_connections_are_limited_per_user(daemon: Env) -> None:
    limit = ipmuxd.connection_limit(daemon.host.ipmux.quota)
    script = (
        "import socket, sys, time\n"
        "socks = []\n"
        f"for _ in range({limit + 3}):\n"
        "    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
        f"    s.connect({str(daemon.sock)!r})\n"
        "    socks.append(s)\n"
        "time.sleep(1)\n"
        "refused = 0\n"
        "for s in socks:\n"
        "    s.settimeout(0.05)\n"
        "    try:\n"
        "        refused += b'too many connections' in s.recv(4096)\n"
        "    except TimeoutError:\n"
        "        pass\n"
        "print(refused)\n"
    )
    priv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={TEST_GID}"]
    r = subprocess.run([*priv, daemon.py.python, "-c", script], capture_output=True, text=True,
                       timeout=30, env=daemon.py.env())  # fmt: skip
    assert r.stdout.strip() == "3", r.stderr
    p = daemon.client(f"{RUN}af", ["true"])  # all closed again: served
    assert p.wait(timeout=20) == 0


def test_malformed_requests_get_errors_and_others_are_served(
    daemon: Env, netns: Callable[[str], str]
) -> None:
    target = netns("t")
    nsfd = os.open(nsutil.netns_path(target), os.O_RDONLY)
    notns = os.open("/dev/null", os.O_RDONLY)
    try:
        cases = [
            (b"garbage", [nsfd], "JSON"),
            (b'{"name": "x_y"}', [nsfd], "not allowed"),
            (b'{"name": "okname"}', [], "exactly one fd"),
            (b'{"name": "okname"}', [nsfd, nsfd], "exactly one fd"),
            (b'{"name": "okname"}', [notns], "not a network namespace"),
            (b'{"name": "okname", "kind": "bond"}', [nsfd], "kind"),
            (b"\0" * 5000, [], "JSON"),  # truncated
        ]
        for msg, fds, why in cases:
            reply = daemon.raw(msg, fds)
            assert reply["ok"] is False and why in str(reply["error"]), (msg[:20], reply)
        # A half-open client that never sends anything does not block the others.
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        idle.connect(str(daemon.sock))
        # Root may hand over any namespace: a macvtap appears there, and goes with the socket.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(daemon.sock))
        msg = json.dumps({"name": f"{RUN}vt", "kind": "macvtap", "ifname": "vt0"}).encode()
        s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [nsfd]))])
        s.settimeout(5)
        reply = json.loads(s.recv(4096))
        assert reply["ok"] is True and reply["kind"] == "macvtap", reply
        assert "vt0" in links_in(nsfd)
        s.send(b'{"name": "again"}')
        assert "one device per connection" in json.loads(s.recv(4096))["error"]
        s.close()
        wait_for(lambda: "vt0" not in links_in(nsfd), timeout=5)
        idle.close()
        # And an unprivileged caller is still served.
        p = daemon.client(f"{RUN}ok", ["true"])
        _, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
    finally:
        os.close(nsfd)
        os.close(notns)


def test_ipvlan_where_the_kernel_has_it(daemon: Env) -> None:
    probe = subprocess.run(
        ["ip", "-n", daemon.mux, "link", "add", "ipvprobe", "link", "host0", "type", "ipvlan"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        reply = daemon.raw(b'{"name": "ipv", "kind": "ipvlan"}', [])
        assert reply["ok"] is False
        pytest.skip(f"this kernel has no ipvlan ({probe.stderr.strip()})")
    subprocess.run(["ip", "-n", daemon.mux, "link", "del", "ipvprobe"], check=True)
    p = daemon.client(f"{RUN}ipv", ["ip", "-d", "link", "show", "eth0"])
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0 and "ipvlan" in out, err


def test_socket_activation(env: Env, procs: Callable[..., subprocess.Popen[bytes]]) -> None:
    """LISTEN_FDS: the daemon serves the socket it was given (as systemd would pass it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(str(env.sock))
    os.chown(env.sock, 0, TEST_GID)
    env.sock.chmod(0o660)
    s.listen(8)
    wrapper = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.set_inheritable(3, True); "
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
        "os.execv(sys.executable, [sys.executable, '-m', 'netmux.ipmuxd', *sys.argv[2:]])"
    )
    procs([sys.executable, "-c", wrapper, str(s.fileno()), "--config", str(env.cfg)],
          pass_fds=[s.fileno()], cwd=REPO)  # fmt: skip
    s.close()
    p = env.client(f"{RUN}sa", ["true"])
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err


def test_daemon_survives_fd_exhaustion(
    env: Env, procs: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """Out of file descriptors, ipmuxd says so, sheds idle connections and serves again."""
    import resource

    log = env.dir / "ipmuxd.log"
    with open(log, "wb") as out:
        p = procs([sys.executable, "-m", "netmux.ipmuxd", "--config", str(env.cfg)], cwd=REPO,
                  stderr=out)  # fmt: skip
    wait_for(env.sock.exists, timeout=10)
    resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (40, 40))
    idle: list[socket.socket] = []
    try:
        for _ in range(60):  # root: no per-user limit; ~30 fit under 40 descriptors
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(str(env.sock))
            idle.append(s)
        wait_for(lambda: "out of file descriptors" in log.read_text(), timeout=10)
    finally:
        for s in idle:
            s.close()
    c = env.client(f"{RUN}fd", ["true"])
    _, err = c.communicate(timeout=30)
    assert c.returncode == 0, err
    assert "accepting again" in log.read_text()
    assert p.poll() is None


def test_kinds_a_member_may_ask_for(
    env: Env, procs: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """`[ipmux] kinds = ["routed"]`: a member cannot get onto the shared segment."""
    env.cfg.write_text(env.cfg.read_text().replace("[ipmux]\n", '[ipmux]\nkinds = ["routed"]\n'))
    start_daemon(env, procs)
    p = env.client(f"{RUN}kd", ["true"], kind="macvlan")
    _, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert "kind 'macvlan' is not allowed here (ipmux.kinds: routed)" in err, err
