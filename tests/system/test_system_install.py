"""`make install` stages a usable tree, and its units run a workload under a real systemd.

The install is staged with DESTDIR (never onto this host); the container then sees the
staged /usr/local at /usr/local, exactly where a real install puts it, and starts
netmux-mux, netmux-radvd and a workload from the installed units.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import sysbox

pytestmark = pytest.mark.system

PREFIX = "/usr/local"
CONFIG = '[mux]\nstatic_addresses = ["2001:db8:0:1::1/64"]\n'


def make(*args: str, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(sysbox.REPO), *args, f"DESTDIR={dest}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    dest = tmp_path_factory.mktemp("destdir")
    r = make("install", dest=dest)
    assert r.returncode == 0, r.stdout + r.stderr
    yield dest


def test_staged_tree(staged: Path) -> None:
    root = staged / PREFIX.lstrip("/")
    for s in ("netmux", "phonebookd", "ipmuxd"):
        link = root / "bin" / s
        assert os.readlink(link) == f"{PREFIX}/lib/netmux/venv/bin/{s}"
    unit = (root / "lib/systemd/system/netmux@.service").read_text()
    assert f"ExecStart=!{PREFIX}/bin/netmux up %i" in unit
    assert "@BINDIR@" not in unit
    rules = (root / "lib/udev/rules.d/90-netmux.rules").read_text()
    assert f'RUN+="{PREFIX}/bin/netmux --quiet nic adopt $env{{INTERFACE}}"' in rules
    assert (root / "share/doc/netmux/systemd.md").exists()
    assert (root / "share/doc/netmux/examples/units/joined-httpd@.service").exists()
    assert (root / "share/man/man8/netmux.8").exists()
    assert (staged / "etc/netmux/netmux.toml").exists()
    # The venv was built under DESTDIR but points at its final home.
    left = subprocess.run(
        ["grep", "-rlI", "-F", str(staged), str(staged)], capture_output=True, text=True
    ).stdout
    assert not left, left
    manifest = (root / "lib/netmux/installed-files").read_text().split()
    assert f"{PREFIX}/bin/netmux" in manifest
    assert f"{PREFIX}/lib/systemd/system/netmux-mux.service" in manifest


def test_installed_units_run_a_workload(staged: Path) -> None:
    with sysbox.boot(config=CONFIG, binds=[(staged / PREFIX.lstrip("/"), PREFIX)]) as box:
        assert box.run(f"{PREFIX}/bin/netmux", "--version").stdout.startswith("netmux ")
        box.install_dbus_policy(sorted((staged / "etc/dbus-1/system.d").glob("*.conf")))
        box.systemctl("start", "netmux-mux.service", "netmux-radvd.service", "netmux@inst.service")
        props = box.show("netmux@inst.service", "ActiveState", "StatusText", "FragmentPath")
        assert props["ActiveState"] == "active"
        assert props["FragmentPath"] == f"{PREFIX}/lib/systemd/system/netmux@.service"
        assert "2001:db8:0:1:" in props["StatusText"]
        box.systemctl("stop", "netmux@inst.service", "netmux-radvd.service", "netmux-mux.service")
        assert not box.path("/run/netns/inst").exists()


def test_uninstall_removes_what_install_put(staged: Path) -> None:
    r = make("uninstall", dest=staged)
    assert r.returncode == 0, r.stdout + r.stderr
    left = sorted(
        str(p.relative_to(staged)) for p in (staged / PREFIX.lstrip("/")).rglob("*") if p.is_file()
    )
    assert left == [], left
    assert (staged / "etc/netmux/netmux.toml").exists()  # configuration is kept
