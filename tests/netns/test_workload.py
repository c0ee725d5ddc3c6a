"""Workload lifecycle against a real mux + radvd: addresses, reachability, kills, errors."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux import become, config, links, names, nsutil, resolv, tap, workload
from netmux.errors import StateError
from tests import muxfix
from tests.conftest import RUN, stop_process, wait_for
from tests.muxfix import MuxEnv

pytestmark = pytest.mark.netns

mux_radvd_module = muxfix.mux_radvd_module


@pytest.fixture
def env(mux_radvd_module: MuxEnv) -> MuxEnv:
    return mux_radvd_module


wname = muxfix.wname


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def world(env: MuxEnv) -> tuple[frozenset[str], str, frozenset[str]]:
    """What a workload can leave behind: namespaces, links in mux, state files."""
    ns = frozenset(n for n in os.listdir("/run/netns") if n.startswith(RUN))
    mux_links = _ip("-n", env.netns, "-o", "link")
    mux_links = "\n".join(sorted(line.split(":")[1].strip() for line in mux_links.splitlines()))
    state = env.host.paths.run_dir / "workloads"
    files = frozenset(os.listdir(state)) if state.exists() else frozenset()
    return ns, mux_links, files


def assert_gone(env: MuxEnv, name: str) -> None:
    assert not links.netns_exists(name), f"/run/netns/{name} still exists"
    assert not workload.state_path(env.host, name).exists()
    assert workload.status(env.host, name)["state"] == "absent"
    assert not resolv.path(name).parent.exists(), f"{resolv.path(name)} still exists"


def test_address_stable_across_down_up_and_changes_with_host_key(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    n = wname()
    env.netmux("up", n)
    first = env.global_address(n)
    mac = workload.status(env.host, n)["mac"]
    assert first.startswith("2001:db8:0:1:")
    # the short start timer (start_retrans_time_ms, for DAD) is gone once `up` returned
    retrans = nsutil.read_sysctl(n, "net.ipv6.neigh.eth0.retrans_time_ms")
    assert retrans == str(env.host.workload.retrans_time_ms)
    env.netmux("down", n)
    assert_gone(env, n)
    env.netmux("up", n)
    assert env.global_address(n) == first
    assert workload.status(env.host, n)["mac"] == mac
    env.netmux("down", n)
    key = env.host.paths.host_key
    old_key = key.read_bytes()
    key.unlink()
    try:
        env.netmux("up", n)
        assert env.global_address(n) != first
        assert workload.status(env.host, n)["mac"] != mac
        env.netmux("down", n)
    finally:
        key.write_bytes(old_key)


def test_two_workloads_reach_each_other_and_the_gateway(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    a, b = wname(), wname()
    env.netmux("up", a)
    env.netmux("up", b)
    b_global = env.global_address(b)
    a_ula = str(workload.status(env.host, a)["addresses"]["ula"][0]).split("/")[0]  # type: ignore[index]
    for ns, dst in ((a, b_global), (b, a_ula), (a, "2001:db8:0:1::1")):
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "ping", "-6", "-c", "1", "-W", "2", dst],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 0, f"{ns} -> {dst}: {r.stdout}{r.stderr}"
    # `ls`/`status` of many (one thread visiting each namespace) say what status() says
    absent = wname()
    many = workload.statuses(env.host, [a, b, absent])
    assert many == [workload.status(env.host, n) for n in (a, b, absent)]
    assert [r["state"] for r in many] == ["up", "up", "absent"]
    # `down` of several: each one, a bad name is one line and the rest still goes
    r = env.netmux("-q", "down", a, "Bad/Name", b, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Bad/Name" in r.stderr, r.stderr
    assert_gone(env, a)
    assert_gone(env, b)


def test_run_exec_ls_status(env: MuxEnv, wname: Callable[[], str]) -> None:
    n = wname()
    r = env.netmux(
        "run", n, "--", "sh", "-c", "ip -6 -o addr show dev eth0 scope global; exit 3", check=False
    )
    assert r.returncode == 3, r.stderr
    assert "2001:db8:0:1:" in r.stdout and "fd64:cafe::" in r.stdout
    assert_gone(env, n)

    env.netmux("up", n)
    r = env.netmux("exec", n, "--", "ip", "-6", "route", "show", "default")
    assert "via fe80::" in r.stdout and "dev eth0" in r.stdout
    rows = json.loads(env.netmux("ls", "--json").stdout)
    (row,) = [x for x in rows if x["name"] == n]
    assert row["state"] == "up" and row["ifname"] == "eth0" and row["netns"] == n
    assert row["addresses"]["global"][0].startswith("2001:db8:0:1:")
    assert row["addresses"]["ula"][0].startswith("fd64:cafe:")
    st = json.loads(env.netmux("status", n, "--json").stdout)
    assert st["mac"] == row["mac"] and st["dns"] == []  # no phonebookd here: no names
    text = env.netmux("status", n).stdout
    assert "global 2001:db8:0:1:" in text and "ula    fd64:cafe:" in text
    env.netmux("down", n)
    env.netmux("down", n)  # idempotent
    r = env.netmux("status", n, check=False)
    assert r.returncode == 3


def test_run_says_in_one_line_why_a_command_cannot_run(
    env: MuxEnv, wname: Callable[[], str], tmp_path: Path
) -> None:
    n = wname()
    junk = tmp_path / "not-a-program"
    junk.write_bytes(b"\x00\x01 neither ELF nor #!")
    junk.chmod(0o755)
    r = env.netmux("run", n, "--", str(junk), check=False)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("netmux run:")]
    assert len(errors) == 1 and "Exec format error" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert_gone(env, n)


def test_run_says_what_failed_before_the_command(
    env: MuxEnv, wname: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step between fork and exec (entering the namespace, dropping privileges) that
    fails: its own error, not subprocess's "Exception occurred in preexec_fn"."""
    n = wname()

    def refuse(user: object, gid: object) -> None:
        raise OSError(errno.EPERM, "setgroups: Operation not permitted")

    monkeypatch.setattr(become, "drop_privileges", refuse)
    wl = config.load_workload(env.host, n, env={})
    with pytest.raises(StateError, match=r"cannot start true in it: .*setgroups"):
        workload.run(env.host, wl, ("true",))
    assert_gone(env, n)


def test_up_execs_cmd_as_user_in_the_namespace(env: MuxEnv, wname: Callable[[], str]) -> None:
    n = wname()
    r = env.netmux(
        "up", n, "--user", "nobody", "--",
        "sh", "-c", 'id -u; echo "$USER $LOGNAME"; ip -6 -o addr show dev eth0 scope global',
    )  # fmt: skip
    lines = r.stdout.splitlines()
    assert lines[0] == "65534"
    assert lines[1] == "nobody nobody"
    assert "2001:db8:0:1:" in r.stdout
    env.netmux("down", n)
    assert_gone(env, n)


def _caps(text: str, field: str = "CapBnd") -> int:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"{field}:")]
    return int(line.split()[1], 16)


def test_the_command_runs_without_cap_sys_admin_unless_asked(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    """Root in a workload must not remount its unit's read-only /proc/sys or enter another
    workload's namespace: CAP_SYS_ADMIN is out of the command's bounding set (up, run and
    a unit's hold alike); `sys_admin = true` keeps it; `netmux exec` (the admin's) keeps
    it too."""
    sys_admin = 1 << 21
    status = ("cat", "/proc/self/status")
    n = wname()
    r = env.netmux("up", n, "--", *status)
    # Inheritable too: root's exec keeps it otherwise (a container's payload may start
    # with every capability inheritable, as the fresh-root test's does).
    for field in ("CapBnd", "CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert not _caps(r.stdout, field) & sys_admin, (field, r.stdout)
    assert _caps(r.stdout) & (1 << 12)  # CAP_NET_ADMIN stays: only SYS_ADMIN goes
    env.netmux("down", n)
    r = env.netmux("run", n, "--", "sh", "-c", "mount -t tmpfs none /mnt; echo rc=$?")
    assert "rc=0" not in r.stdout, r.stdout
    assert_gone(env, n)
    r = env.netmux("up", n, "--", *status, env={"NETMUX_SYS_ADMIN": "1"})
    assert _caps(r.stdout) & sys_admin
    env.netmux("down", n)
    env.netmux("up", n)
    assert _caps(env.netmux("exec", n, "--", *status).stdout) & sys_admin
    env.netmux("down", n)
    assert_gone(env, n)


def test_every_exec_path_sees_the_advertised_resolver(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    """IPv6-only inside: the host's resolv.conf would not work, the RDNSS address does."""
    want = f"nameserver {env.host.resolver.address}"
    cat = ("cat", "/etc/resolv.conf")
    n = wname()
    r = env.netmux("run", n, "--user", "nobody", "--", *cat)
    assert want in r.stdout.splitlines()
    assert_gone(env, n)
    r = env.netmux("up", n, "--", *cat)
    assert want in r.stdout.splitlines()
    env.netmux("down", n)
    env.netmux("up", n)
    assert want in resolv.path(n).read_text().splitlines()
    r = subprocess.run(["ip", "netns", "exec", n, *cat], capture_output=True, text=True)
    assert want in r.stdout.splitlines(), r.stderr
    r = env.netmux("exec", n, "--", *cat)
    assert want in r.stdout.splitlines()
    host_conf = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
    assert want not in host_conf.splitlines()  # only the exec'd process saw the bind
    env.netmux("down", n)
    assert_gone(env, n)


def test_killed_cmd_leaves_nothing_after_down(env: MuxEnv, wname: Callable[[], str]) -> None:
    n = wname()
    p = subprocess.Popen(env.argv("up", n, "--", "sleep", "60"), env=env.env(),
                         stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: workload.read_state(env.host, n), timeout=10)
        # exec: the workload is the process netmux was (same PID), no Python stays
        wait_for(lambda: Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep", timeout=5)
        assert workload.read_state(env.host, n)["pid"] == p.pid  # type: ignore[index]
        assert os.stat(f"/proc/{p.pid}/ns/net").st_ino == os.stat(f"/run/netns/{n}").st_ino
    finally:
        p.kill()
        p.wait()
    assert workload.status(env.host, n)["running"] is False
    env.netmux("down", n)
    assert_gone(env, n)


def test_sigkilled_up_leaves_nothing_after_down(env: MuxEnv, wname: Callable[[], str]) -> None:
    n = wname()
    before = world(env)
    for delay in (0.05, 0.12, 0.16, 0.2, 0.24, 0.28, 0.35, 0.5):
        p = subprocess.Popen(env.argv("up", n, "--", "sleep", "60"), env=env.env(),
                             stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(delay)
        p.kill()
        p.wait()
        env.netmux("down", n)
        assert_gone(env, n)
    assert world(env) == before


def test_bad_input_gives_one_line_and_changes_nothing(
    env: MuxEnv, wname: Callable[[], str], tmp_path: Path
) -> None:
    n, held = wname(), wname()
    env.netmux("up", held)
    held_addr = env.global_address(held)
    before = world(env)
    cases: list[tuple[list[str], int, str]] = [
        (["up", "Bad_Name"], 2, "is not allowed"),
        (["up", "default"], 2, "is reserved"),
        (["up", n, "--user", "nosuchuser"], 2, "unknown user 'nosuchuser'"),
        (["up", n, "--", "/nonexistent/cmd"], 2, "not found or not executable"),
        (["up", n, "--port", "tcp/99999"], 2, "tcp/99999"),
        (["up", n, "--vm", "--", "true"], 2, "{tapfd}"),
        (["up", held], 1, f"workload '{held}' is already up"),
        (["up", env.netns], 2, "is the mux namespace's name"),
        (["down", env.netns], 2, "is the mux namespace, not a workload"),
        (["run", n], 2, "a command is needed"),
        (["exec", n, "--", "true"], 1, "is not up"),
        (["down", "Bad_Name"], 2, "is not allowed"),
    ]
    for argv, code, text in cases:
        r = env.netmux(*argv, check=False)
        assert r.returncode == code, (argv, r.stderr)
        assert text in r.stderr, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (argv, r.stderr)
        assert world(env) == before, argv
    assert env.global_address(held) == held_addr
    # a namespace netmux did not make is never removed by `down`
    foreign = env.name("f")
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        subprocess.run(["ip", "-n", foreign, "link", "add", "v0", "type", "veth"], check=True)
        r = env.netmux("down", foreign, check=False)
        assert r.returncode == 1 and "was not made by netmux" in r.stderr
        assert links.netns_exists(foreign)
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=True)
    # a host whose mux does not exist
    nomux = muxfix.write_config(tmp_path, f"{RUN}nomux")
    r = subprocess.run(
        [*env.argv("up", n)[:3], "--config", str(nomux), "up", n],
        env=env.env(), capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1 and f"mux namespace '{RUN}nomux' does not exist" in r.stderr
    assert world(env) == before


def test_vm_gets_a_macvtap_fd_and_mac(env: MuxEnv, wname: Callable[[], str]) -> None:
    n = wname()
    r = env.netmux(
        "run", n, "--vm", "--",
        "sh", "-c", "readlink /proc/self/fd/{tapfd}; echo mac={mac}; ip -d -o link show eth0",
    )  # fmt: skip
    lines = r.stdout.splitlines()
    # /dev/tapN when that node is this macvtap's, else a node of its own numbers made and
    # removed by the opener (another namespace's tap may own /dev/tapN: tests/unit/test_tap.py
    # checks the device numbers themselves).
    assert re.match(r"/dev/(tap\d+$|\.netmux-tap\.)", lines[0]), r.stdout
    mac = lines[1].removeprefix("mac=")
    assert mac == names.stable_mac(names.load_host_key(env.host.paths.host_key), n)
    assert "macvtap mode bridge" in lines[2] and mac in lines[2]
    assert_gone(env, n)
    # the exec path (netmux@ units): QEMU becomes the process and inherits the tap fd
    r = env.netmux("up", n, "--vm", "--", "sh", "-c", "readlink /proc/self/fd/{tapfd}")
    assert re.match(r"/dev/(tap\d+$|\.netmux-tap\.)", r.stdout), r.stdout
    assert workload.status(env.host, n)["kind"] == "vm"
    env.netmux("down", n)
    assert_gone(env, n)


def _in_private_dev(env: MuxEnv, dev_opts: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`netmux ARGS` in a private mount namespace whose /dev is a fresh tmpfs: no /dev/tapN
    node at all, and with "nodev" no node made there can be opened either."""
    script = f'mount -t tmpfs -o {dev_opts} netmuxtest /dev && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "-",
         *env.argv(*args)],
        # The probe's `ip netns exec` (for the namespace's own /sys) needs CAP_SYS_ADMIN.
        env={**env.env(), "NETMUX_SYS_ADMIN": "1"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_vm_tap_is_its_own_device_without_dev_nodes(env: MuxEnv, wname: Callable[[], str]) -> None:
    """Without /dev/tapN the tap is opened through a node of its own numbers; on a nodev /dev
    that cannot work: one line, nothing left. Every VM has ifindex 2: each gets its own."""
    a, b = wname(), wname()
    probe = "stat -L -c %t:%T /proc/self/fd/{tapfd}; cat /sys/class/net/eth0/macvtap/tap*/dev"
    for n in (a, b):
        r = _in_private_dev(env, "mode=755", "run", n, "--vm", "--",
                            "ip", "netns", "exec", n, "sh", "-c", probe)  # fmt: skip
        assert r.returncode == 0, r.stderr
        held, own = r.stdout.split()
        major, minor = (int(x) for x in own.split(":"))
        assert held == f"{major:x}:{minor:x}", r.stdout
        assert_gone(env, n)
    r = _in_private_dev(env, "mode=755,nodev", "run", a, "--vm", "--", "echo", "{tapfd}")
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("netmux run:")]
    assert len(errors) == 1 and "cannot open tap device" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert_gone(env, a)


def test_vm_taps_of_two_vms_differ(env: MuxEnv, wname: Callable[[], str]) -> None:
    """Both macvtaps are tap2 (ifindex 2 in fresh namespaces); each fd is its own device."""
    a, b = wname(), wname()
    for n in (a, b):
        env.netmux("up", n, "--vm")
    fds = [tap.open_tap(n, "eth0", "test") for n in (a, b)]
    try:
        devs = [tap.find_device(n, "eth0", "test") for n in (a, b)]
        assert devs[0].name == devs[1].name == "tap2" and devs[0].rdev != devs[1].rdev
        assert [os.fstat(fd).st_rdev for fd in fds] == [d.rdev for d in devs]
        flags = _ip("-n", a, "-d", "link", "show", "eth0")
        assert "ALLMULTI" in flags, flags  # the guest's solicited-node groups pass
    finally:
        for fd in fds:
            os.close(fd)
    for n in (a, b):
        env.netmux("down", n)


def test_exec_joins_a_vm_with_its_tap_and_mac(env: MuxEnv, wname: Callable[[], str]) -> None:
    """A QEMU started on its own (`netmux exec NAME -- ...`) gets the same tap and MAC."""
    n = wname()
    env.netmux("up", n, "--vm")
    probe = "stat -L -c %t:%T /proc/self/fd/{tapfd}; cat /sys/class/net/eth0/macvtap/tap*/dev"
    r = env.netmux("exec", n, "--", "sh", "-c", f"echo {{mac}}; ip netns exec {n} sh -c '{probe}'")
    mac, held, own = r.stdout.split()
    assert mac == workload.status(env.host, n)["mac"]
    major, minor = (int(x) for x in own.split(":"))
    assert held == f"{major:x}:{minor:x}", r.stdout
    env.netmux("down", n)


def test_commandless_up_holds_a_notify_unit(
    env: MuxEnv, wname: Callable[[], str], tmp_path: Path
) -> None:
    """As a Type=notify unit's main process without a command, `netmux up` stays (as
    sleep, same PID) so that the unit, with RemainAfterExit=no, keeps the namespace."""
    n = wname()
    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    e = env.env()
    e.update(NOTIFY_SOCKET=str(path), INVOCATION_ID="0123456789abcdef0123456789abcdef")
    p = subprocess.Popen(env.argv("up", n), env=e, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep", timeout=20)
        assert p.poll() is None and links.netns_exists(n)
        assert workload.status(env.host, n)["state"] == "up"
    finally:
        stop_process(p)
        s.close()
    env.netmux("down", n)
    assert_gone(env, n)


def test_notify_status_and_ready_under_systemd(
    env: MuxEnv, wname: Callable[[], str], tmp_path: Path
) -> None:
    n = wname()
    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)
    try:
        e = env.env()
        e["NOTIFY_SOCKET"] = str(path)
        r = subprocess.run(env.argv("up", n, "--", "true"), env=e, capture_output=True,
                           text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        msg = s.recv(65536).decode()
    finally:
        s.close()
    fields = dict(line.split("=", 1) for line in msg.splitlines())
    assert fields["READY"] == "1"
    assert "global 2001:db8:0:1:" in fields["STATUS"]
    assert "dns" not in fields["STATUS"]  # no phonebookd here: no name is published
    env.netmux("down", n)


@pytest.mark.parametrize(
    ("radvd", "static", "expected"),
    [
        (False, True, "no router advertisement received on eth0 within 0.6s: is radvd running"),
        (True, False, "no global prefix on gw0"),
    ],
)
def test_wait_timeout_names_what_is_missing(
    tmp_path: Path, radvd: bool, static: bool, expected: str
) -> None:
    with muxfix.running_mux(tmp_path / "m", radvd=radvd, static=static) as env:
        n = env.name("t")
        r = env.netmux("up", n, "--timeout", "0.6", check=False)
        assert r.returncode == 1
        assert expected in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert_gone(env, n)
        env.netmux("up", n, "--wait", "none")  # nothing to wait for: up at once
        assert workload.status(env.host, n)["state"] in ("up", "degraded")
        env.netmux("down", n)


def test_run_forwards_sigterm_and_cleans_up(
    env: MuxEnv, wname: Callable[[], str], tmp_path: Path
) -> None:
    n = wname()
    mark = tmp_path / "trapped"
    script = f"trap 'exit 42' TERM; touch {mark}; while :; do sleep 0.05; done"
    p = subprocess.Popen(env.argv("run", n, "--", "sh", "-c", script), env=env.env(),
                         stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(mark.exists, timeout=15)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 42
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert_gone(env, n)


def test_workload_file_static_address_is_bindable_at_ready(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    """A resolver-style workload: a static ULA from its file, its command from the file
    too; the command can bind the static address the moment it starts."""
    n = wname()
    d = env.host.paths.workloads_dir
    d.mkdir(parents=True, exist_ok=True)
    script = (
        "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
        "s.bind(('fd64:cafe::5353', 5353)); print('bound', s.getsockname()[0])"
    )
    (d / f"{n}.toml").write_text(
        f'addresses = ["fd64:cafe::5353/64"]\ncommand = ["{sys.executable}", "-c", "{script}"]\n'
    )
    try:
        r = env.netmux("up", n)
        assert "bound fd64:cafe::5353" in r.stdout
        st = workload.status(env.host, n)
        assert any(a.startswith("fd64:cafe::5353/64") for a in st["addresses"]["ula"])  # type: ignore[index]
        env.netmux("down", n)
        # the environment (systemd drop-ins) overrides the file
        e = env.env()
        e["NETMUX_COMMAND"] = "true"
        e["NETMUX_ADDRESSES"] = "fd64:cafe::5454/64"
        r = subprocess.run(env.argv("up", n), env=e, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        st = workload.status(env.host, n)
        assert any(a.startswith("fd64:cafe::5454/64") for a in st["addresses"]["ula"])  # type: ignore[index]
    finally:
        (d / f"{n}.toml").unlink()


def test_unit_user_from_systemd_environment(env: MuxEnv, wname: Callable[[], str]) -> None:
    """ExecStart=!netmux up NAME with User=nobody: systemd passes USER=nobody (and
    INVOCATION_ID); the workload runs as nobody. Outside systemd $USER is ignored."""
    n = wname()
    e = env.env()
    e.update(USER="nobody", INVOCATION_ID="0123456789abcdef0123456789abcdef")
    r = subprocess.run(env.argv("up", n, "--", "id", "-u"), env=e, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "65534", r.stderr
    env.netmux("down", n)
    e.pop("INVOCATION_ID")
    r = subprocess.run(env.argv("up", n, "--", "id", "-u"), env=e, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "0", r.stderr
    env.netmux("down", n)


def test_duplicate_addresses(tmp_path: Path) -> None:
    """Without optimistic DAD `up` waits for DAD. A node already using the workload's SLAAC
    address: the kernel moves on to the next stable-privacy address (RFC 7217 DAD
    counter) and `up` succeeds with it. A node using its *static* address: `up` fails with
    one line naming the address, and leaves nothing."""
    with muxfix.running_mux(tmp_path / "m", extra="[workload]\noptimistic_dad = false\n") as env:
        n = env.name("d")
        env.netmux("up", n)
        addr = env.global_address(n)
        env.netmux("down", n)
        squatter = env.name("s")
        subprocess.run(["ip", "netns", "add", squatter], check=True)
        try:
            subprocess.run(
                ["ip", "-n", env.netns, "link", "add", "link", "host0", "name", "sq0",
                 "netns", squatter, "type", "macvlan", "mode", "bridge"], check=True,
            )  # fmt: skip
            for a in (f"{addr}/64", "fd64:cafe::77/64"):
                subprocess.run(["ip", "-n", squatter, "addr", "add", a, "dev", "sq0", "nodad"],
                               check=True)  # fmt: skip
            subprocess.run(["ip", "-n", squatter, "link", "set", "sq0", "up"], check=True)
            env.netmux("up", n)
            assert env.global_address(n) != addr
            env.netmux("down", n)
            r = env.netmux("up", n, "--address", "fd64:cafe::77/64", check=False)
            assert r.returncode == 1
            assert "DAD failed for fd64:cafe::77/64 on eth0" in r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert_gone(env, n)
        finally:
            subprocess.run(["ip", "netns", "del", squatter], check=True)
