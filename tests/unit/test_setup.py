"""The set-up a new user runs: README's two commands, the Makefile's package lists, CI.

The commands themselves are proven on fresh roots by `make test-fresh` (tests/fresh_root.py);
these unit tests keep the pieces that proof relies on consistent with each other.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from netmux.config import parse_host
from netmux.lab import upstream
from tests import fresh_root
from tests.conftest import PROGRAM_PACKAGES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _make_list(name: str) -> set[str]:
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    m = re.search(rf"^{name}\s*:=(.*)$", text, re.M)
    assert m, f"Makefile has no {name}"
    return set(m.group(1).split())


def test_readme_starts_with_the_two_commands_that_work_on_a_root_without_apt_lists() -> None:
    cmds = fresh_root.readme_commands()
    assert len(cmds) == 2
    demo, test = cmds
    for cmd in cmds:
        assert cmd.startswith("apt-get update && apt-get install -y make && ")
    assert demo.endswith("make demo") and test.endswith("make test")


def test_ci_runs_the_readme_test_command_and_the_fresh_root_check() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M)
    assert "make test-fresh" in ci


def test_every_program_a_test_requires_comes_from_a_listed_package() -> None:
    """A missing program fails under `make test` unless optional: so each must be one that
    `make deps` installs (required, packaging or optional)."""
    listed = _make_list("APT_REQUIRED") | _make_list("APT_PACKAGING") | _make_list("APT_OPTIONAL")
    assert {p for p in PROGRAM_PACKAGES.values()} - listed == set()


def test_optional_packages_are_few_and_named() -> None:
    assert _make_list("APT_OPTIONAL") == {"tayga", "tinydns", "udev"}


def test_the_package_build_dependencies_are_installed_by_make_deps() -> None:
    control = (REPO / "debian" / "control").read_text()
    build = re.search(r"^Build-Depends:(.*?)^\S", control, re.M | re.S)
    assert build
    names = {re.split(r"[\s(]", alt.strip())[0] for dep in build.group(1).split(",")
             for alt in dep.split("|") if alt.strip()}  # fmt: skip
    names.discard("debhelper-compat")  # provided by debhelper
    have = _make_list("APT_REQUIRED") | _make_list("APT_PACKAGING")
    have |= _make_list("APT_WHERE_PRESENT") | {"systemd"}
    assert names - have == set()


def test_the_package_depends_on_what_its_units_call() -> None:
    depends = (REPO / "debian" / "control").read_text().split("Package: netmux", 1)[1]
    for unit in (REPO / "units").glob("*.service"):
        if "/bin/kill" in unit.read_text():
            assert "procps" in depends, f"{unit.name} calls kill: netmux must depend on procps"


def test_fresh_root_sources_name_the_release_its_updates_and_security() -> None:
    assert fresh_root.sources("trixie") == [
        "deb http://deb.debian.org/debian trixie main",
        "deb http://deb.debian.org/debian trixie-updates main",
        "deb http://deb.debian.org/debian-security trixie-security main",
    ]


def test_kea_control_socket_directory_is_0750_and_named_in_the_environment(
    tmp_path: Path,
) -> None:
    env = upstream.kea_env(tmp_path)
    sock_dir = Path(env["KEA_CONTROL_SOCKET_DIR"])
    assert stat.S_IMODE(sock_dir.stat().st_mode) == 0o750
    assert upstream.kea_socket(tmp_path).parent == sock_dir
    conf = upstream.kea_config(upstream.plan(parse_host("")), tmp_path)
    assert str(upstream.kea_socket(tmp_path)) in conf
