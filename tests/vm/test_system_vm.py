"""A VM as a netmux@ unit under a real systemd, with a real guest (tests/guest.py).

QEMU is the unit's main process: the guest's poweroff ends the unit (inactive) and
ExecStopPost removes everything; `systemctl start` boots it again with the same address;
kill -9 of QEMU fails the unit and cleans up the same way; `Restart=on-failure` in a
drop-in brings it back. The container's /dev has no /dev/tapN and systemd's /run is nodev:
the tap is opened through a node of its own made under /dev.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator

import pytest

from tests import guest, sysbox
from tests.system.test_system_netmux import CONFIG, leftovers

pytestmark = [
    pytest.mark.vm,
    pytest.mark.requires("qemu-system-x86_64", "cpio", "apt-get", "dpkg-deb", "curl", "dig"),
]

BOOT = 90.0
VM = "vm1"
CLIENT = "client"


@pytest.fixture(scope="module")
def image() -> guest.Guest:
    return guest.cached()


@pytest.fixture(scope="module")
def box(image: guest.Guest) -> Iterator[sysbox.SysBox]:
    with sysbox.boot(CONFIG, units=True, binds=[(image.kernel.parent, "/guest")]) as b:
        b.systemctl("start", "netmux-mux.service", "netmux-radvd.service")
        yield b


def dropin(secret: str | None, extra: str = "") -> str:
    g = guest.Guest(sysbox.Path("/guest/vmlinuz"), sysbox.Path("/guest/initrd"))
    argv = guest.qemu_argv(g, VM, sysbox.Path(f"/run/{VM}.console"), secret)
    cmd = " ".join(shlex.quote(a) if " " not in a else f'"{a}"' for a in argv)
    return f"[Service]\nExecStart=\nExecStart=!@BINDIR@/netmux up %i --vm -- {cmd}\n{extra}"


def guest_address(box: sysbox.SysBox, vm: str = VM) -> str:
    def seen() -> str | None:
        try:
            text = box.path(f"/run/{vm}.console").read_text(errors="replace")
        except FileNotFoundError:
            return None
        found = re.findall(r"^NETMUX-GUEST-ADDR .*?(2001:db8:0:1:[0-9a-f:]+)/", text, re.M)
        return found[-1] if found else None

    return str(box.wait_for(seen, timeout=BOOT))


def http(box: sysbox.SysBox, addr: str, path: str = "/") -> str:
    return box.run(
        "ip", "netns", "exec", CLIENT, "curl", "-sS", "-g", "-m", "10", f"http://[{addr}]{path}"
    ).stdout


def test_vm_unit_ends_with_qemu_and_starts_again(box: sysbox.SysBox) -> None:
    u = f"netmux@{VM}.service"
    box.add_dropin(u, "10-qemu.conf", dropin("2001:db8::77"))
    box.systemctl("start", f"netmux@{CLIENT}.service")
    try:
        r = box.systemctl("start", u, check=False)
        assert r.returncode == 0, box.run("journalctl", "--no-pager", "-u", u, check=False).stdout
        pid = box.show(u, "MainPID")["MainPID"]
        assert box.path(f"/proc/{pid}/comm").read_text().startswith("qemu-system")
        addr = guest_address(box)
        assert http(box, addr) == f"hello from {VM}\n"

        # The guest powers off: QEMU exits 0, the unit is inactive, nothing is left.
        assert http(box, addr, "/cgi-bin/poweroff").strip() == "bye"
        box.wait_for(lambda: box.show(u, "ActiveState")["ActiveState"] == "inactive", BOOT)
        box.wait_for(lambda: not leftovers(box, VM), timeout=10)

        # Started again: it boots, with the same address; kill -9 of QEMU fails the unit.
        box.path(f"/run/{VM}.console").unlink()
        box.systemctl("start", u)
        assert guest_address(box) == addr
        box.run("kill", "-9", box.show(u, "MainPID")["MainPID"])
        box.wait_for(lambda: box.show(u, "ActiveState")["ActiveState"] == "failed", 20)
        box.wait_for(lambda: not leftovers(box, VM), timeout=10)
        box.systemctl("reset-failed", u)

        # Restart=on-failure in a drop-in: a killed QEMU comes back.
        box.add_dropin(u, "20-restart.conf", "[Service]\nRestart=on-failure\nRestartSec=1\n")
        box.path(f"/run/{VM}.console").unlink()
        box.systemctl("start", u)
        guest_address(box)
        first = box.show(u, "MainPID")["MainPID"]
        box.path(f"/run/{VM}.console").unlink()
        box.run("kill", "-9", first)
        assert guest_address(box) == addr
        now = box.show(u, "ActiveState", "MainPID", "NRestarts")
        assert now["ActiveState"] == "active" and now["MainPID"] != first, now
        assert int(now["NRestarts"]) >= 1
    finally:
        box.systemctl("stop", u, f"netmux@{CLIENT}.service", check=False)
        box.systemctl("reset-failed", u, check=False)
    box.wait_for(lambda: not leftovers(box, VM), timeout=10)


def test_qemu_joined_from_a_unit_of_its_own(box: sysbox.SysBox) -> None:
    """`netmux@vm2` with no command keeps the namespace; `vm2-qemu.service` starts QEMU
    through `netmux exec`, which opens the same tap: the guest is reachable, its address
    is in `netmux status`, and its poweroff ends only the QEMU unit."""
    wl, q = "vm2", "vm2-qemu.service"
    box.add_dropin(f"netmux@{wl}.service", "10-vm.conf", "[Service]\nEnvironment=NETMUX_KIND=vm\n")
    g = guest.Guest(sysbox.Path("/guest/vmlinuz"), sysbox.Path("/guest/initrd"))
    argv = guest.qemu_argv(g, wl, sysbox.Path(f"/run/{wl}.console"))
    cmd = " ".join(shlex.quote(a) if " " not in a else f'"{a}"' for a in argv)
    box.write(
        f"/etc/systemd/system/{q}",
        f"[Unit]\nBindsTo=netmux@{wl}.service\nAfter=netmux@{wl}.service\n"
        f"[Service]\nExecStart={sysbox.UNIT_BIN}/netmux exec {wl} -- {cmd}\n",
    )
    box.daemon_reload()
    box.systemctl("start", f"netmux@{CLIENT}.service")
    try:
        box.systemctl("start", q)
        assert box.show(f"netmux@{wl}.service", "ActiveState")["ActiveState"] == "active"
        addr = guest_address(box, wl)
        assert http(box, addr) == f"hello from {wl}\n"

        def listed() -> bool:
            out = box.run(f"{sysbox.UNIT_BIN}/netmux", "status", wl, "--json").stdout
            return addr in json.loads(out).get("guest", [])

        box.wait_for(listed, timeout=10)
        assert http(box, addr, "/cgi-bin/poweroff").strip() == "bye"
        box.wait_for(lambda: box.show(q, "ActiveState")["ActiveState"] == "inactive", BOOT)
        assert box.show(f"netmux@{wl}.service", "ActiveState")["ActiveState"] == "active"
    finally:
        box.systemctl("stop", q, f"netmux@{wl}.service", f"netmux@{CLIENT}.service", check=False)
    box.wait_for(lambda: not leftovers(box, wl), timeout=10)
