"""netmux under a real systemd: the units, the journal, drop-ins and cleanup, end to end.

One container per module: netmux-mux and netmux-radvd run in it with a static prefix on
gw0 (2001:db8:0:1::/64), as a host with a routed prefix would; each test starts its own
workload units. Names inside the container need no run prefix (its netns are private);
the veth used for the hot-plug test lives on the host for a moment and carries it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator

import pytest

from netmux import journal
from tests import sysbox
from tests.conftest import RUN, wait_for

pytestmark = pytest.mark.system

PREFIX = "2001:db8:0:1:"
CONFIG = '[mux]\nstatic_addresses = ["2001:db8:0:1::1/64"]\n'
EXAMPLES = sysbox.UNITS_DIR / "examples"
MUX_LINKS = {"lo", "host0", "host0p", "gw0", "eth6", "eth7", "eth8"}  # NICs of the hot-plug tests

box = sysbox.module_box(config=CONFIG, units=True)


@pytest.fixture(scope="module")
def mux(box: sysbox.SysBox) -> sysbox.SysBox:
    box.systemctl("start", "netmux-mux.service", "netmux-radvd.service")
    return box


@pytest.fixture
def unit(mux: sysbox.SysBox) -> Iterator[Callable[[str], str]]:
    """unit("x") names a workload unit that is stopped and reset after the test."""
    started: list[str] = []

    def name(wl: str) -> str:
        started.append(wl)
        return f"netmux@{wl}.service"

    yield name
    for wl in started:
        u = f"netmux@{wl}.service"
        mux.systemctl("stop", u, check=False)
        mux.systemctl("reset-failed", u, check=False)
        d = mux.etc / "systemd" / "system" / f"{u}.d"
        if d.exists():
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    mux.daemon_reload()


def global_address(box: sysbox.SysBox, wl: str) -> str:
    out = box.run("ip", "-n", wl, "-6", "-o", "addr", "show", "scope", "global").stdout
    found = re.findall(r"inet6 (2001:db8:0:1:[0-9a-f:]+)/64", out)
    assert found, out
    return found[0]


def leftovers(box: sysbox.SysBox, wl: str) -> list[str]:
    """Anything of workload `wl` still on the (container's) system."""
    left = []
    if box.path(f"/run/netns/{wl}").exists():
        left.append(f"netns {wl}")
    if box.path(f"/run/netmux/workloads/{wl}.json").exists():
        left.append(f"state {wl}")
    extra = mux_links(box) - MUX_LINKS if box.path("/run/netns/mux").exists() else set()
    if extra:
        left.append(f"links in mux: {sorted(extra)}")
    return left


def mux_links(box: sysbox.SysBox) -> set[str]:
    out = box.run("ip", "-n", "mux", "-o", "link").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_start_status_and_reachable(box: sysbox.SysBox, unit: Callable[[str], str]) -> None:
    u = unit("httpd")
    box.systemctl("start", u)
    props = box.show(u, "ActiveState", "StatusText")
    assert props["ActiveState"] == "active"
    addr = global_address(box, "httpd")
    assert addr in props["StatusText"] and "httpd.internal" in props["StatusText"]
    # Reachable from another namespace: a second workload.
    box.systemctl("start", unit("client"))
    box.run("ip", "netns", "exec", "client", "ping", "-6", "-c1", "-W5", addr)


def test_journal_fields(box: sysbox.SysBox, unit: Callable[[str], str]) -> None:
    u = unit("jrnl")
    box.systemctl("start", u)
    recs = box.journal("-u", u)
    ups = [r for r in recs if r.get("MESSAGE_ID") == journal.WORKLOAD_UP]
    assert ups, recs
    assert ups[-1]["NETMUX_WORKLOAD"] == "jrnl"
    assert ups[-1]["NETMUX_NETNS"] == "jrnl"
    assert ups[-1]["NETMUX_IFNAME"] == "eth0"
    assert ups[-1]["NETMUX_ADDRESS"] == global_address(box, "jrnl")
    assert ups[-1]["NETMUX_PREFIX"] == "2001:db8:0:1::/64"
    by_field = box.journal("NETMUX_WORKLOAD=jrnl")
    assert any(r.get("MESSAGE_ID") == journal.WORKLOAD_UP for r in by_field)
    box.systemctl("stop", u)
    downs = box.journal("NETMUX_WORKLOAD=jrnl", f"MESSAGE_ID={journal.WORKLOAD_DOWN}")
    # `down` ran in the warm launcher's worker (netmux/launcher.py): about the unit, so
    # `journalctl -u` finds it, though the worker is not in the unit's cgroup.
    assert downs and u in (downs[-1]["_SYSTEMD_UNIT"], downs[-1].get("OBJECT_SYSTEMD_UNIT"))
    assert [r for r in box.journal("-u", u) if r.get("MESSAGE_ID") == journal.WORKLOAD_DOWN]


def test_published_while_the_unit_runs(box: sysbox.SysBox, unit: Callable[[str], str]) -> None:
    """phonebookd (pulled in by netmux@) has the record before READY=1, follows address
    changes (ADDRESS_CHANGED), and keeps the record of a command-less workload in the
    unit's fd store until the unit stops."""
    u = unit("renum")
    box.systemctl("start", u)
    assert box.show("phonebookd.service", "ActiveState")["ActiveState"] == "active"
    mid = "MESSAGE_ID="
    assert box.journal("NETMUX_WORKLOAD=renum", mid + journal.RECORD_PUBLISHED)
    assert not box.journal("NETMUX_WORKLOAD=renum", mid + journal.RECORD_REMOVED)
    assert box.show(u, "NFileDescriptorStore")["NFileDescriptorStore"] == "1"
    box.run("ip", "-n", "renum", "addr", "add", "2001:db8:0:1::99/64", "dev", "eth0", "nodad")

    def changed() -> bool:
        recs = box.journal("NETMUX_WORKLOAD=renum", f"MESSAGE_ID={journal.ADDRESS_CHANGED}")
        return any("2001:db8:0:1::99" in str(r.get("MESSAGE")) for r in recs)

    box.wait_for(changed)
    box.systemctl("stop", u)
    box.wait_for(lambda: box.journal("NETMUX_WORKLOAD=renum", mid + journal.RECORD_REMOVED))


def test_dropin_adds_command_and_port(box: sysbox.SysBox, unit: Callable[[str], str]) -> None:
    u = unit("web")
    box.systemctl("start", u)  # the namespace only: nothing listens yet
    addr = global_address(box, "web")
    box.write("/srv/web/index.html", "hello from web\n")
    dropin = (EXAMPLES / "netmux@web.service.d" / "10-command.conf").read_text()
    box.add_dropin(u, "10-command.conf", dropin)
    box.systemctl("restart", u)
    props = box.show(u, "ActiveState", "MainPID", "StatusText")
    assert props["ActiveState"] == "active"
    # After exec the workload itself is the unit's main process.
    assert box.path(f"/proc/{props['MainPID']}/comm").read_text().strip() == "busybox"
    assert global_address(box, "web") == addr  # stable across restarts
    box.systemctl("start", unit("browser"))
    page = box.run(
        "ip", "netns", "exec", "browser", "curl", "-sS", "-g", "-m", "5",
        f"http://[{addr}]/",
    ).stdout  # fmt: skip
    assert page == "hello from web\n"


def test_user_is_honoured_for_the_workload(box: sysbox.SysBox, unit: Callable[[str], str]) -> None:
    u = unit("asuser")
    box.add_dropin(
        u,
        "10-command.conf",
        "[Service]\nExecStart=\nExecStart=!@BINDIR@/netmux up %i -- /bin/sleep infinity\n"
        "RemainAfterExit=no\nUser=nobody\n",
    )
    box.systemctl("start", u)
    pid = box.show(u, "MainPID")["MainPID"]
    status = box.path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
    assert uid and uid.group(1) == "65534", status
    assert (
        box.run("readlink", f"/proc/{pid}/ns/net").stdout
        == box.run("ip", "netns", "exec", "asuser", "readlink", "/proc/self/ns/net").stdout
    )


ATTACK = (
    "mount -o remount,bind,rw /proc/sys 2>/dev/null; echo remount=$?; "
    "test -w /proc/sys/kernel/printk_ratelimit && echo sysctl-writable; "  # never written
    "nsenter --net=/proc/$VICTIM/ns/net true 2>/dev/null; echo setns=$?"
)


@pytest.mark.parametrize("sys_admin", [False, True])
def test_root_in_a_workload_cannot_undo_its_sandbox_or_join_another(
    box: sysbox.SysBox, unit: Callable[[str], str], sys_admin: bool
) -> None:
    """Root in netmux@X's command: no remounting the unit's read-only /proc/sys writable
    (a host sysctl would follow), no setns into another workload's namespace through a
    root process there. With `sys_admin = true` both work: the attack is real."""
    victim, attacker = unit("victim"), unit(f"atk{int(sys_admin)}")
    box.systemctl("start", victim)
    pid = box.show(victim, "MainPID")["MainPID"]
    out = f"/run/attack-{int(sys_admin)}.out"
    box.write("/run/attack.sh", f"{{ {ATTACK}; }} > $OUT.tmp; mv $OUT.tmp $OUT\n")
    box.add_dropin(
        attacker,
        "10-command.conf",
        "[Service]\nExecStart=\nExecStart=!@BINDIR@/netmux up %i -- /bin/sh /run/attack.sh\n"
        f"Environment=VICTIM={pid} OUT={out} NETMUX_SYS_ADMIN={int(sys_admin)}\n"
        "RemainAfterExit=no\n",
    )
    box.systemctl("start", attacker)
    box.wait_for(lambda: box.path(out).exists())
    got = box.path(out).read_text().split()
    box.path(out).unlink()
    if sys_admin:
        assert got == ["remount=0", "sysctl-writable", "setns=0"], got
    else:
        assert len(got) == 2 and got[0] != "remount=0" and got[1] != "setns=0", got


@pytest.mark.parametrize("how", ["stop", "kill9", "failing"])
def test_nothing_left_behind(box: sysbox.SysBox, unit: Callable[[str], str], how: str) -> None:
    wl = f"gone{how[:4]}"
    u = unit(wl)
    cmd = "/bin/false" if how == "failing" else "/bin/sleep infinity"
    box.add_dropin(
        u,
        "10-command.conf",
        f"[Service]\nExecStart=\nExecStart=!@BINDIR@/netmux up %i -- {cmd}\nRemainAfterExit=no\n",
    )
    box.systemctl("start", u, check=how != "failing")
    assert box.path(f"/run/netns/{wl}").exists() or how == "failing"
    if how == "stop":
        box.systemctl("stop", u)
    elif how == "kill9":
        pid = box.show(u, "MainPID")["MainPID"]
        box.run("kill", "-9", pid)
    box.wait_for(lambda: box.show(u, "ActiveState")["ActiveState"] in ("inactive", "failed"))
    box.wait_for(lambda: not leftovers(box, wl), timeout=5)
    if how != "stop":
        assert box.show(u, "ActiveState")["ActiveState"] == "failed"


def test_bad_setting_fails_with_one_line(box: sysbox.SysBox, unit: Callable[[str], str]) -> None:
    """`netmux up` refusing a setting: the unit fails, one clear line, nothing built."""
    u = unit("badport")
    box.add_dropin(u, "env.conf", "[Service]\nEnvironment=NETMUX_PORTS=tcp/99999\n")
    assert box.systemctl("start", u, check=False).returncode != 0
    msgs = [str(r.get("MESSAGE")) for r in box.journal("-u", u) if r.get("_COMM") != "systemd"]
    errors = [m for m in msgs if m.startswith("netmux up:")]
    assert len(errors) == 1 and "NETMUX_PORTS" in errors[0], msgs
    assert not [m for m in msgs if "Traceback" in m], msgs
    assert not leftovers(box, "badport")


def test_without_the_launcher_the_sandboxed_unit_refuses(
    box: sysbox.SysBox, unit: Callable[[str], str]
) -> None:
    """netmux@'s sandbox has a mount namespace of its own: without the warm launcher
    (here: its socket set empty for this unit), `netmux up` must not name a namespace in
    there (it would be dead outside) but fail with one line saying what to start."""
    u = unit("nolaunch")
    box.add_dropin(u, "env.conf", "[Service]\nEnvironment=NETMUX_LAUNCH_SOCKET=\n")
    assert box.systemctl("start", u, check=False).returncode != 0
    msgs = [str(r.get("MESSAGE")) for r in box.journal("-u", u) if r.get("_COMM") != "systemd"]
    errors = [m for m in msgs if m.startswith("netmux up:")]
    assert len(errors) == 1 and "netmux-launcher.socket" in errors[0], msgs
    assert not [m for m in msgs if "Traceback" in m], msgs
    # The launcher built it ahead all the same (it cannot see the unit's environment) and
    # removes that build when the unit's cgroup goes.
    box.wait_for(lambda: not leftovers(box, "nolaunch"), timeout=5)
    assert not box.path("/run/netns/nolaunch").exists()


def test_second_unit_joins_the_namespace(box: sysbox.SysBox, unit: Callable[[str], str]) -> None:
    u = unit("shared")
    box.install_units([EXAMPLES / "joined-httpd@.service"], reload=False)
    box.add_dropin(u, "ports.conf", "[Service]\nEnvironment=NETMUX_PORTS=tcp/8080\n")
    box.systemctl("start", u, "joined-httpd@shared.service")
    addr = global_address(box, "shared")
    seen = box.run(
        "systemd-run", "--wait", "--pipe", "--quiet",
        "-p", "NetworkNamespacePath=/run/netns/shared",
        "ip", "-6", "-o", "addr", "show", "scope", "global",
    ).stdout  # fmt: skip
    assert addr in seen

    # BindReadOnlyPaths= in the example: the joined service resolves through fd64:cafe::53.
    # (Type=simple: start returns at fork, before systemd has set up the child's mounts.)
    def joined_resolv() -> bool:
        pid = box.show("joined-httpd@shared.service", "MainPID")["MainPID"]
        out = box.run("cat", f"/proc/{pid}/root/etc/resolv.conf", check=False).stdout
        return "nameserver fd64:cafe::53" in out.splitlines()

    wait_for(joined_resolv, timeout=10)
    box.systemctl("start", unit("peer"))
    r = box.run(
        "ip", "netns", "exec", "peer", "curl", "-sS", "-g", "-m", "5", "-o", "/dev/null",
        f"http://[{addr}]:8080/", check=False,
    )  # fmt: skip
    # busybox httpd answers (404 for a directory without index.html is an answer too).
    assert "Connection refused" not in r.stderr and "timed out" not in r.stderr, r.stderr
    # BindsTo=: stopping the workload stops the joined service.
    box.systemctl("stop", u)
    assert box.show("joined-httpd@shared.service", "ActiveState")["ActiveState"] != "active"


def test_mux_adopts_a_hotplugged_nic(mux: sysbox.SysBox) -> None:
    """A veth whose container end appears (already named eth7) after netmux-mux started."""
    host_if = f"{RUN}hp"
    mux.host_links.append(host_if)
    try:
        subprocess.run(
            ["ip", "link", "add", host_if, "type", "veth",
             "peer", "name", "eth7", "netns", str(mux.leader)],
            check=True,
        )  # fmt: skip
        mux.wait_for(
            lambda: mux.run("ip", "-n", "mux", "link", "show", "eth7", check=False).returncode == 0,
            timeout=10,
        )
        recs = mux.journal("-u", "netmux-mux.service", f"MESSAGE_ID={journal.NIC_ADOPTED}")
        assert any(r.get("NETMUX_IFNAME") == "eth7" for r in recs), recs
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False, stderr=subprocess.DEVNULL)


def test_mux_adopts_a_nic_renamed_after_it_appeared(mux: sysbox.SysBox) -> None:
    """As on a real host, where udev renames the kernel's name: adoption on 'move'."""
    host_if = f"{RUN}rn"
    mux.host_links.append(host_if)
    try:
        subprocess.run(
            ["ip", "link", "add", host_if, "type", "veth",
             "peer", "name", "kern0", "netns", str(mux.leader)],
            check=True,
        )  # fmt: skip
        mux.run("ip", "link", "set", "kern0", "name", "eth6")
        mux.wait_for(
            lambda: mux.run("ip", "-n", "mux", "link", "show", "eth6", check=False).returncode == 0,
            timeout=10,
        )
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False, stderr=subprocess.DEVNULL)


def test_daemons_run_clean_in_their_sandboxes(mux: sysbox.SysBox) -> None:
    """radvd and dhcpcd under their units' sandboxes: started, and nothing refused them."""
    host_if = f"{RUN}up"
    mux.host_links.append(host_if)
    try:
        subprocess.run(
            ["ip", "link", "add", host_if, "type", "veth",
             "peer", "name", "eth8", "netns", str(mux.leader)],
            check=True,
        )  # fmt: skip
        mux.wait_for(lambda: mux.run("ip", "-n", "mux", "link", "show", "eth8", check=False))
        mux.systemctl("start", "netmux-dhcpcd.service")
        mux.wait_for(
            lambda: any(
                "eth8" in r.get("MESSAGE", "") for r in mux.journal("-u", "netmux-dhcpcd.service")
            )
        )
        for u in ("netmux-dhcpcd.service", "netmux-radvd.service"):
            assert mux.show(u, "ActiveState")["ActiveState"] == "active"
            bad = [
                r["MESSAGE"]
                for r in mux.journal("-u", u)
                if re.search(r"not permitted|Read-only file system|denied", str(r.get("MESSAGE")))
            ]
            assert not bad, f"{u}: {bad}"
        mux.systemctl("stop", "netmux-dhcpcd.service")
    finally:
        subprocess.run(["ip", "link", "del", host_if], check=False, stderr=subprocess.DEVNULL)


def test_stopping_mux_stops_workloads_and_removes_mux(
    mux: sysbox.SysBox, unit: Callable[[str], str]
) -> None:
    """ExecStop=netmux mux down; Requires= takes the workloads (and BindsTo= the daemons)."""
    u = unit("last")
    mux.systemctl("start", u)
    mux.systemctl("stop", "netmux-mux.service")
    try:
        for v in (u, "netmux-radvd.service"):
            assert mux.show(v, "ActiveState")["ActiveState"] in ("inactive", "failed")
        assert not leftovers(mux, "last")
        assert not mux.path("/run/netns/mux").exists()
    finally:
        mux.systemctl("start", "netmux-mux.service", "netmux-radvd.service")


def test_built_while_systemd_sets_up_the_unit(
    box: sysbox.SysBox, unit: Callable[[str], str]
) -> None:
    """The launcher builds a netmux@ unit's workload as systemd makes the unit's cgroup
    (netmux/unitwatch.py); the unit's `netmux up` takes it."""
    u = unit("ahead")
    box.systemctl("start", u)
    ups = [r for r in box.journal("-u", u) if r.get("MESSAGE_ID") == journal.WORKLOAD_UP]
    assert ups and "(built ahead)" in str(ups[-1]["MESSAGE"]), ups
    assert global_address(box, "ahead") in box.show(u, "StatusText")["StatusText"]


def test_a_unit_failing_before_its_up_leaves_nothing(
    box: sysbox.SysBox, unit: Callable[[str], str]
) -> None:
    """Built ahead, never asked for: ExecStartPre= fails, so no `netmux up` comes; what
    was built is gone with the unit, and nothing was published."""
    u = unit("early")
    pre = "test -e /run/netns/early && touch /run/early-was-built; exit 1"
    box.add_dropin(u, "10-fail.conf", f"[Service]\nExecStartPre=+/bin/sh -c 'sleep 0.5; {pre}'\n")
    assert box.systemctl("start", u, check=False).returncode != 0
    assert box.path("/run/early-was-built").exists()  # it was there while the unit started
    box.wait_for(lambda: not leftovers(box, "early"), timeout=5)
    assert not box.journal("NETMUX_WORKLOAD=early", f"MESSAGE_ID={journal.RECORD_PUBLISHED}")
    box.run("rm", "-f", "/run/early-was-built")


def test_a_dropin_with_other_settings_gets_its_own_build(
    box: sysbox.SysBox, unit: Callable[[str], str]
) -> None:
    u = unit("other")
    box.add_dropin(u, "10-port.conf", "[Service]\nEnvironment=NETMUX_PORTS=tcp/8080\n")
    box.systemctl("start", u)
    msgs = [str(r.get("MESSAGE")) for r in box.journal("-u", u)]
    assert any("built ahead with other settings" in m for m in msgs), msgs
    assert "8080" in box.run("ip", "netns", "exec", "other", "nft", "list", "ruleset").stdout
