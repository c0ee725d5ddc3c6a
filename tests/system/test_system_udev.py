"""udev/90-netmux.rules: which devices it hands to `netmux nic adopt`, and that call itself.

udev rules never fire in the container (systemd-udevd skips read-only /sys), so the rule
is checked with `udevadm test --action=add` (which prints the RUN lines without running
them), and the RUN line, taken from the rule as installed, is then run by hand.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests import sysbox
from tests.conftest import RUN

pytestmark = pytest.mark.system

RULES = sysbox.REPO / "udev" / "90-netmux.rules"
CONFIG = '[mux]\nuplinks = ["eth*"]\n'
UDEVADM = shutil.which("udevadm")

box = sysbox.module_box(config=CONFIG, units=True)


@pytest.fixture(scope="module")
def nic(box: sysbox.SysBox) -> Iterator[str]:
    """A veth whose container end is eth5, with the rules installed and netmux-mux running."""
    rules = box.etc / "udev" / "rules.d"
    rules.mkdir(parents=True)
    (rules / RULES.name).write_text(sysbox.substitute(RULES.read_text(), sysbox.VENV_BIN))
    host_if = f"{RUN}ud"
    box.host_links.append(host_if)
    subprocess.run(
        ["ip", "link", "add", host_if, "type", "veth",
         "peer", "name", "eth5", "netns", str(box.leader)],
        check=True,
    )  # fmt: skip
    yield "eth5"
    subprocess.run(["ip", "link", "del", host_if], check=False, stderr=subprocess.DEVNULL)


def udev_runs(box: sysbox.SysBox, ifname: str) -> list[str]:
    assert UDEVADM
    r = box.run(UDEVADM, "test", "--action=add", f"/sys/class/net/{ifname}")
    assert "90-netmux.rules" in r.stderr  # read without complaint
    assert not re.search(r"90-netmux\.rules.*(invalid|error|ignor)", r.stderr, re.I), r.stderr
    # udevadm 252 prints "run: 'CMD'", 257 "RUN{program} : CMD".
    found = re.findall(r"^\s*(?:run: '(.*)'|RUN\{program\}\s*: (.*))$", r.stdout, re.M)
    return [old or new for old, new in found]


@pytest.mark.requires("udevadm")
def test_rule_skips_virtual_devices_unless_marked(box: sysbox.SysBox, nic: str) -> None:
    assert not [r for r in udev_runs(box, nic) if "netmux" in r]
    (box.etc / "udev" / "rules.d" / "89-lab.rules").write_text(
        f'SUBSYSTEM=="net", KERNEL=="{nic}", ENV{{NETMUX_UPLINK}}="1"\n'
    )
    try:
        runs = [r for r in udev_runs(box, nic) if "netmux" in r]
    finally:
        (box.etc / "udev" / "rules.d" / "89-lab.rules").unlink()
    assert runs == [f"{sysbox.VENV_BIN}/netmux --quiet nic adopt {nic}"]


def test_run_line_adopts_the_nic(box: sysbox.SysBox, nic: str) -> None:
    """The RUN+= command exactly as the installed rule has it, run as udev would."""
    rule = (box.etc / "udev" / "rules.d" / RULES.name).read_text()
    m = re.search(r'RUN\+="([^"]+)"', rule)
    assert m
    argv = shlex.split(m.group(1).replace("$env{INTERFACE}", nic))
    # The name does not match: logged and skipped, not an error (udev would log a failure).
    box.run(*[a if a != nic else "lo" for a in argv])
    netmux = str(sysbox.VENV_BIN / "netmux")
    box.run(netmux, "mux", "up")  # mux without the watcher: only the rule adopts
    try:
        assert box.run("ip", "-n", "mux", "link", "show", nic, check=False).returncode != 0
        box.run(*argv)
        box.run("ip", "-n", "mux", "link", "show", nic)
        box.run(*argv)  # again: already gone from here, skipped, not an error
    finally:
        box.run(netmux, "mux", "down")
