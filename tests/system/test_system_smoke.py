"""The sysbox fixture boots a real systemd whose systemctl, journald and D-Bus work."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests import sysbox
from tests.conftest import RUN

pytestmark = pytest.mark.system

box = sysbox.module_box()


def test_boots_to_running(box: sysbox.SysBox) -> None:
    r = box.run("systemctl", "is-system-running", "--wait", check=False, timeout=30)
    assert r.stdout.strip() == "running", box.systemctl("--failed", check=False).stdout
    assert box.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    # A fresh machine-id: no first-boot preset-all started the host's services.
    assert box.systemctl("is-active", "radvd.service", check=False).stdout.strip() != "active"


def test_transient_unit_and_journal_fields(box: sysbox.SysBox) -> None:
    box.run(
        "systemd-run", "--unit=smoke", "--wait", "--quiet", "-p", "Type=oneshot",
        "/usr/bin/python3", "-c",
        "from systemd import journal; journal.send('hello', NETMUX_WORKLOAD='smoke')",
    )  # fmt: skip
    recs = box.journal("NETMUX_WORKLOAD=smoke")
    assert recs and recs[-1]["MESSAGE"] == "hello"
    assert recs[-1]["_SYSTEMD_UNIT"] == "smoke.service"


def test_unit_from_etc_starts(box: sysbox.SysBox) -> None:
    box.write(
        "/etc/systemd/system/hello.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/echo hi there\n",
    )
    box.daemon_reload()
    box.systemctl("start", "hello.service")
    assert box.show("hello.service", "ActiveState")["ActiveState"] == "active"
    recs = box.journal("-u", "hello.service")
    assert any(r.get("MESSAGE") == "hi there" for r in recs)
    box.systemctl("stop", "hello.service")


def test_system_bus_from_the_host(box: sysbox.SysBox) -> None:
    out = subprocess.run(
        ["busctl", f"--address={box.bus_address}", "--json=short", "get-property",
         "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.systemd1.Manager", "Version"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    assert json.loads(out)["data"].startswith("25")


def test_checkout_venv_runs_inside(box: sysbox.SysBox) -> None:
    out = box.run(str(sysbox.VENV_BIN / "netmux"), "--version").stdout
    assert out.startswith("netmux ")


def test_boot_is_fast_and_clean() -> None:
    t = time.monotonic()
    with sysbox.boot() as b:
        booted = time.monotonic() - t
        assert b.leader > 1
    # Not a timed assertion of speed (bench/ measures that): a generous functional bound.
    assert booted < 10


def test_veth_extra_reaches_inside_and_goes_away() -> None:
    host_if = f"{RUN}vx"
    with sysbox.boot(veth_extra=[(host_if, "eth9")]) as b:
        assert Path(f"/sys/class/net/{host_if}").exists()
        assert b.run("ip", "link", "show", "eth9").returncode == 0
    assert not Path(f"/sys/class/net/{host_if}").exists()
