"""VMs that really work: real guests (tests/guest.py) booted under QEMU/TCG in a `netmux lab`.

Two guests at once, one doing EUI-64 SLAAC, one stable privacy: each on its own tap (the
st_rdev of QEMU's fd is its own macvtap's), reachable over HTTP from the lab router and
from another workload (the macvtap's multicast filter passes the guest's solicited-node
groups), their addresses learned by phonebookd and answered by knotd, `status` showing
them; a guest's poweroff and a QEMU kill -9 leave `exited` and drop the records; the same
name again gets the same MAC and address.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from netmux import config, lab, tap
from netmux.config import HostConfig
from netmux.phonebook import client as phonebook
from tests import guest, labfix, phonebookfix
from tests.conftest import RUN, Unprivileged, stop_process, wait_for
from tests.phonebookfix import PUBLIC, Stack, nsrun

pytestmark = [
    pytest.mark.vm,
    pytest.mark.requires("qemu-system-x86_64", "cpio", "apt-get", "dpkg-deb", "curl", "dig"),
]

lab_host = labfix.lab_host  # fixture
BOOT = 90.0  # TCG on two busy cores: kernel to SLAAC address in 3-15 s, give it room
SECRET = "2001:db8::5ec:2e7"  # the stable-privacy guest's stable_secret
REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture(scope="session")
def image() -> guest.Guest:
    return guest.cached()


stack = phonebookfix.stack


class Vms:
    """QEMU guests started by `netmux up NAME --vm -- qemu-system-x86_64 ...` (PID is QEMU's)."""

    def __init__(self, host: HostConfig, tmp: Path, image: guest.Guest, bus: str) -> None:
        self.host, self.tmp, self.image, self.bus = host, tmp, image, bus
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NETMUX_", "NOTIFY_"))}
        env["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus
        return env

    def netmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "netmux.cli", "--config", self.host.source, *args]
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=30)

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.console"

    def start(self, name: str, secret: str | None = None) -> subprocess.Popen[bytes]:
        self.log(name).unlink(missing_ok=True)
        qemu = guest.qemu_argv(self.image, name, self.log(name), secret)
        argv = [sys.executable, "-m", "netmux.cli", "--config", self.host.source,
                "up", name, "--vm", "--", *qemu]  # fmt: skip
        p = subprocess.Popen(argv, env=self.env())
        self.procs[name] = p
        return p

    def addresses(self, name: str) -> list[str]:
        """The guest's global addresses in the lab prefix, once it has them (console)."""

        def seen() -> list[str]:
            inside = [a for a in guest.addresses(self.log(name)) if self.in_prefix(a)]
            p = self.procs[name]
            assert p.poll() is None, f"{name}: QEMU exited {p.returncode}"
            return inside

        return wait_for(seen, timeout=BOOT, step=0.2)  # type: ignore[return-value]

    def in_prefix(self, a: str) -> bool:
        return IPv6Address(a) in self.host.lab.prefix

    def status(self, name: str) -> dict[str, object]:
        r = self.netmux("status", name, "--json")
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def close(self) -> None:
        for p in self.procs.values():
            stop_process(p)
        for name in self.procs:
            self.netmux("down", name)


@pytest.fixture
def vms(lab_host: HostConfig, tmp_path: Path, image: guest.Guest, stack: Stack) -> Iterator[Vms]:
    lab.up(lab_host)
    v = Vms(lab_host, tmp_path, image, stack.bus)
    try:
        yield v
    finally:
        v.close()


def eui64(prefix: IPv6Network, mac: str) -> IPv6Address:
    b = bytearray(bytes.fromhex(mac.replace(":", "")))
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return IPv6Address(int(prefix.network_address) | int.from_bytes(iid, "big"))


def tap_rdev_of(pid: int) -> set[int]:
    """st_rdev of the tap char devices process `pid` holds."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        st = os.stat(f"/proc/{pid}/fd/{fd}")
        if os.major(st.st_rdev) and "tap" in os.readlink(f"/proc/{pid}/fd/{fd}"):
            out.add(st.st_rdev)
    return out


def http(netns: str, addr: str, path: str = "/") -> str:
    r = subprocess.run(
        ["ip", "netns", "exec", netns, "curl", "-sS", "-g", "-m", "10", f"http://[{addr}]{path}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, f"{netns} -> {addr}: {r.stderr.strip()}"
    return r.stdout


def test_two_guests_reachable_published_and_gone_when_they_stop(
    vms: Vms, stack: Stack, uname: Callable[[str], str]
) -> None:
    host = vms.host
    eui, stable = uname("e"), uname("s")
    pe = vms.start(eui)
    ps = vms.start(stable, SECRET)
    client = uname("c")
    assert vms.netmux("up", client).returncode == 0
    a_eui, a_stable = vms.addresses(eui), vms.addresses(stable)

    # Each QEMU holds its own macvtap's device (both macvtaps have ifindex 2).
    devs = {n: tap.find_device(n, host.workload.ifname, "test") for n in (eui, stable)}
    assert devs[eui].name == devs[stable].name == "tap2"
    assert tap_rdev_of(pe.pid) == {devs[eui].rdev}
    assert tap_rdev_of(ps.pid) == {devs[stable].rdev} != {devs[eui].rdev}

    # SLAAC as the guest does it: EUI-64 from netmux's MAC, or stable privacy.
    mac_eui = str(vms.status(eui)["mac"])
    assert str(eui64(host.lab.prefix, mac_eui)) in a_eui
    mac_stable = str(vms.status(stable)["mac"])
    assert str(eui64(host.lab.prefix, mac_stable)) not in a_stable

    # Reachable from the lab router and from another workload, both guests.
    for name, addrs in ((eui, a_eui), (stable, a_stable)):
        for src in (host.lab.router_netns, client):
            assert http(src, addrs[0]) == f"hello from {name}\n"

    # Learned, shown and published: status, ls, and knotd's answer.
    for name, addrs in ((eui, a_eui), (stable, a_stable)):
        wait_for(lambda n=name, a=addrs: set(a) <= set(vms.status(n).get("guest", [])), 10)
        st = vms.status(name)
        assert st["state"] == "up" and f"{name}.internal" in st["dns"], st
        stack.wait_dig(f"{name}.{PUBLIC}", lambda ans, a=addrs: a[0] in ans.split(), timeout=10)
        ula = [a for a in guest.addresses(vms.log(name)) if IPv6Address(a) in host.mux.ula.network]
        internal = nsrun(stack.ns, ["dig", "+short", "@::1", f"{name}.internal", "AAAA"]).stdout
        assert ula and ula[0] in internal.split(), internal  # the internal zone has the ULA
    assert a_eui[0] in vms.netmux("ls").stdout

    # phonebookd restarts (fd store): the learned addresses come back with the records,
    # although an idle guest does no NDP with them.
    assert stack.systemd is not None
    stack.stop_phonebookd()
    with stack.systemd.lock:
        stored = list(stack.systemd.store)
    stack.start_phonebookd(stored)
    for name, addrs in ((eui, a_eui), (stable, a_stable)):
        assert addrs[0] in phonebook.published_addresses(name, address=stack.bus), stack.log()
        assert addrs[0] in stack.dig(f"{name}.{PUBLIC}").split()

    # The guest powers itself off: QEMU exits 0, the workload says so, the records go.
    assert http(client, a_eui[0], "/cgi-bin/poweroff").strip() == "bye"
    assert pe.wait(timeout=30) == 0
    assert vms.status(eui)["state"] == "exited"
    stack.wait_dig(f"{eui}.{PUBLIC}", lambda ans: ans == "", timeout=10)
    # kill -9 of QEMU: the same.
    os.kill(ps.pid, signal.SIGKILL)
    assert ps.wait(timeout=10) == -signal.SIGKILL
    assert vms.status(stable)["state"] == "exited"
    stack.wait_dig(f"{stable}.{PUBLIC}", lambda ans: ans == "", timeout=10)

    # `down`, then the same name again: the same MAC and the same stable-privacy address.
    assert vms.netmux("down", stable).returncode == 0
    assert vms.status(stable)["state"] == "absent"
    ps = vms.start(stable, SECRET)
    assert vms.addresses(stable) == a_stable
    assert vms.status(stable)["mac"] == mac_stable
    assert http(host.lab.router_netns, a_stable[0]) == f"hello from {stable}\n"


def test_guest_through_ipmuxd_as_an_unprivileged_member(
    tmp_config: Callable[..., Path],
    uname: Callable[[str], str],
    image: guest.Guest,
    procs: Callable[..., subprocess.Popen[bytes]],
    unprivileged: Unprivileged,
) -> None:
    """nobody, in the socket's group, boots a guest on a macvtap from ipmuxd: {tapfd} and
    {mac} are filled in, the guest does SLAAC and the lab router reaches it."""
    gid = 200000 + int(RUN[1:], 16)  # unnamed: only this run's socket has it
    d = Path(tempfile.mkdtemp(prefix=f"{RUN}ipm."))  # nobody reaches it (unlike tmp_path)
    d.chmod(0o777)  # and writes the console log there
    made = tmp_config(
        f'[lab]\nrouter_netns = "{uname("rt")}"\nuplink = "{RUN}ulab"\n'
        f'[ipmux]\nsocket = "{d}/ipmuxd.sock"\ngroup = "{gid}"\n'
    )
    path = d / "netmux.toml"
    shutil.copyfile(made, path)
    path.chmod(0o644)
    host = config.load_host(path)
    lab.up(host)
    try:
        procs([sys.executable, "-m", "netmux.ipmuxd", "--config", str(path)], cwd=REPO)
        wait_for(host.ipmux.socket.exists, timeout=10)
        log = d / "console"
        priv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={gid}"]
        qemu = guest.qemu_argv(image, "ipm", log)
        argv = [*priv, unprivileged.python, "-m", "netmux.cli", "--config", str(path), "ipmux",
                "--kind", "macvtap", uname("g"), "--", *qemu]  # fmt: skip
        q = procs(argv, env=unprivileged.env())

        def seen() -> list[str]:
            assert q.poll() is None, f"ipmux/QEMU exited {q.returncode}"
            return [a for a in guest.addresses(log) if IPv6Address(a) in host.lab.prefix]

        addrs: list[str] = wait_for(seen, timeout=BOOT, step=0.2)  # type: ignore[assignment]
        assert http(host.lab.router_netns, addrs[0]) == "hello from ipm\n"
    finally:
        lab.down(host)
        shutil.rmtree(d, ignore_errors=True)
