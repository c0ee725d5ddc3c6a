"""Every unit file, example and drop-in passes `systemd-analyze verify` with nothing on stderr.

verify needs no systemd as PID 1. The units are checked as installed: @BINDIR@ filled in
(the checkout's venv, whose `netmux` exists), the examples' drop-ins in place, and the
project's man pages on MANPATH (verify runs `man` for each Documentation=man: entry).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import sysbox

pytestmark = pytest.mark.unit

EXAMPLES = sysbox.UNITS_DIR / "examples"
MAN_DIR = sysbox.REPO / "docs" / "man"
VERIFY = shutil.which("systemd-analyze")


def _install(tmp: Path) -> list[str]:
    """Lay out the units the way `make install` does; return the names to verify."""
    names = []
    for src in [*sysbox.unit_files(), *sorted(EXAMPLES.glob("*.service"))]:
        (tmp / src.name).write_text(sysbox.substitute(src.read_text(), sysbox.VENV_BIN))
        names.append(src.name)
    for d in EXAMPLES.glob("*.d"):
        if d.name == "netmux@.service.d":  # a trade of the sandbox, not what is shipped
            continue
        (tmp / d.name).mkdir()
        for conf in d.glob("*.conf"):
            (tmp / d.name / conf.name).write_text(
                sysbox.substitute(conf.read_text(), sysbox.VENV_BIN)
            )
    # Templates are verified through an instance: the examples' drop-ins are for "web".
    return [n.replace("@.", "@web.") for n in names]


def _man_path(tmp: Path) -> str:
    for page in MAN_DIR.glob("*.[1-8]"):
        section = tmp / "man" / f"man{page.suffix[1:]}"
        section.mkdir(parents=True, exist_ok=True)
        (section / page.name).symlink_to(page)
    return f"{tmp / 'man'}:"


@pytest.mark.requires("systemd-analyze")
def test_units_verify_cleanly(tmp_path: Path) -> None:
    assert VERIFY
    names = _install(tmp_path)
    assert {"netmux-mux.service", "netmux@web.service", "netmux.target"} <= set(names)
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:", MANPATH=_man_path(tmp_path))
    r = subprocess.run(
        [VERIFY, "verify", *names],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr + r.stdout


def test_only_known_placeholders() -> None:
    """Units carry @BINDIR@ only; anything else would reach the system unsubstituted."""
    files = [*sysbox.unit_files(), *EXAMPLES.rglob("*.service"), *EXAMPLES.rglob("*.conf")]
    for f in files:
        left = set(re.findall(r"@[A-Z_]+@", f.read_text())) - {"@BINDIR@"}
        assert not left, f"{f}: unknown placeholders {left}"
        assert "@BINDIR@" not in sysbox.substitute(f.read_text(), "/usr/bin")


# Options that give a unit a mount namespace of its own. PrivateIPC= counts too: it mounts
# a private /dev/mqueue (measured: a netns created there dies).
MOUNT_NS = re.compile(
    r"^(PrivateMounts|ProtectSystem|ProtectHome|PrivateTmp|PrivateDevices|"
    r"ProtectKernelTunables|ProtectKernelModules|ProtectKernelLogs|ProtectControlGroups|"
    r"ProtectProc|ProcSubset|ReadOnlyPaths|ReadWritePaths|InaccessiblePaths|BindPaths|"
    r"BindReadOnlyPaths|TemporaryFileSystem|MountAPIVFS|RootDirectory|RootImage|"
    r"PrivateUsers|DynamicUser|PrivateIPC|MountImages|ExtensionImages|LogNamespace)=(.*)$",
    re.M,
)


def test_launcher_has_no_mount_namespace_sandboxing() -> None:
    """docs/platform.md: a netns created in a unit with its own mount namespace is dead outside."""
    mount_ns = MOUNT_NS
    for name in ("netmux-mux.service", "netmux-launcher.service"):
        text = (sysbox.UNITS_DIR / name).read_text()
        assert not mount_ns.findall(text), f"{name}: {mount_ns.findall(text)}"
    # The workload's own unit creates none (the launcher does): it has the sandbox.
    assert mount_ns.findall((sysbox.UNITS_DIR / "netmux@.service").read_text())


def test_the_no_mount_sandbox_example_turns_off_every_mount_option_of_the_template() -> None:
    """units/examples/netmux@.service.d/no-mount-sandbox.conf (docs/systemd.md, and
    bench/systemd_dns.py's peer): every mount-namespace option netmux@ sets, turned off."""
    template = dict(MOUNT_NS.findall((sysbox.UNITS_DIR / "netmux@.service").read_text()))
    example = sysbox.UNITS_DIR / "examples" / "netmux@.service.d" / "no-mount-sandbox.conf"
    off = dict(MOUNT_NS.findall(example.read_text()))
    assert set(off) == set(template), set(off) ^ set(template)
    assert all(v == ("default" if k == "ProtectProc" else "no") for k, v in off.items()), off


# The most each unit may score in `systemd-analyze security --offline=true` (10 = no
# sandboxing; measured on systemd 252). Above 3.0 only with a reason:
EXPOSURE = {
    "phonebookd.service": 3.0,
    "ipmuxd.service": 3.0,
    "netmux-denylog.service": 3.0,
    "netmux-host-expire.service": 3.0,
    "netmux-radvd.service": 3.0,
    "netmux-tayga.service": 3.0,
    "netmux-jool.service": 3.0,
    "netmux-dhcpcd.service": 3.0,
    # It creates mux's namespace and moves NICs: no mount-namespace sandboxing, which alone
    # is 8010 of the 15888 that 3.0 allows (docs/systemd.md lists the checks).
    "netmux-mux.service": 4.1,
    # It creates workloads' namespaces: no mount-namespace sandboxing (docs/systemd.md).
    "netmux-launcher.service": 5.0,
    # The workload itself after exec: what common daemons tolerate (docs/systemd.md).
    "netmux@web.service": 5.0,
}


def _systemd_version() -> int:
    out = subprocess.run([VERIFY or "systemd-analyze", "--version"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return int(out.split()[1])


@pytest.mark.skipif(VERIFY is None, reason="systemd-analyze is not installed")
def test_units_stay_below_their_exposure_threshold(tmp_path: Path) -> None:
    assert VERIFY
    _install(tmp_path)
    # Other systemd versions weigh (and add) checks differently: half a point of slack.
    slack = 0.0 if _systemd_version() == 252 else 0.5
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:")
    scores = {}
    for unit in EXPOSURE:
        r = subprocess.run([VERIFY, "security", "--offline=true", unit], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
        assert m, r.stdout + r.stderr
        scores[unit] = float(m.group(1))
    over = {u: s for u, s in scores.items() if s > EXPOSURE[u] + slack}
    assert not over, f"above the threshold: {over} (all: {scores})"
