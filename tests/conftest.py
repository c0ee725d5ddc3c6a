"""Shared fixtures: per-run names, namespace/link factories that always clean up, leak checks.

Every namespace, link, mount and cgroup a test creates carries the per-run prefix RUN
(e.g. "n3fa2"), so that parallel runs on a shared machine never touch each other's
objects. Tests marked netns, system or vm get a leak check: anything with the run prefix, or
any child process, that outlives the test fails it. The pytest process is made a child
subreaper so that daemons which double-fork are still seen (and reaped) here.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RUN = "n" + secrets.token_hex(2)  # 5 characters: leaves 10 for a test's own suffix
PR_SET_CHILD_SUBREAPER = 36
IS_ROOT = os.geteuid() == 0

from tests import leaks  # noqa: E402

# The Debian package of each program a test may need. Under `make test` (which sets
# NETMUX_OPTIONAL to the Makefile's optional list) a missing program fails its test unless
# its package is optional: a skip there would hide an incomplete set-up.
PROGRAM_PACKAGES = {
    "tayga": "tayga",
    "tinydns": "tinydns",
    "tinydns-data": "tinydns",
    "udevadm": "udev",
    "kea-dhcp6": "kea-dhcp6-server",
    "knotc": "knot",
    "knotd": "knot",
    "unbound": "unbound",
    "unbound-checkconf": "unbound",
    "radvd": "radvd",
    "dhcpcd": "dhcpcd-base",
    "busybox": "busybox",
    "iperf3": "iperf3",
    "nft": "nftables",
    "systemd-analyze": "systemd",
    "groff": "groff-base",
    "qemu-system-x86_64": "qemu-system-x86",
    "cpio": "cpio",
    "curl": "curl",
    "dig": "bind9-dnsutils",
}


def require(*programs: str) -> None:
    """Skip (or, under `make test`, fail) unless every program is on PATH."""
    missing = [p for p in programs if shutil.which(p) is None]
    if not missing:
        return
    optional = os.environ.get("NETMUX_OPTIONAL")
    packages = sorted({PROGRAM_PACKAGES.get(p, p) for p in missing})
    what = f"{', '.join(missing)} not installed (Debian: {' '.join(packages)})"
    if optional is not None and not set(packages) <= set(optional.split()):
        pytest.fail(f"{what}: `make deps` should have installed it; the set-up is incomplete",
                    pytrace=False)  # fmt: skip
    pytest.skip(f"{what}; optional" if optional is not None else what)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires"):
        require(*marker.args)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line that says what was skipped and why (the details are in -ra's list)."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons: dict[str, int] = {}
    for rep in skipped:
        longrepr = rep.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        text = "; ".join(f"{n}x {r}" for r, n in sorted(reasons.items()))
        terminalreporter.write_line(f"netmux: skipped {len(skipped)}: {text}")


def pytest_configure(config: pytest.Config) -> None:
    if IS_ROOT:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    os.environ["NETMUX_TEST_RUN"] = RUN


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tiers = {m.name for m in item.iter_markers()} & {"unit", "netns", "system", "vm"}
        if not tiers:
            raise pytest.UsageError(f"{item.nodeid}: mark it unit, netns, system or vm")
        if tiers & {"netns", "system", "vm"} and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root (netns/system/vm tier)"))


def pytest_report_header(config: pytest.Config) -> str:
    return f"netmux test run prefix: {RUN}"


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return RUN


_counter = iter(range(1, 100000))


@pytest.fixture
def uname() -> Callable[[str], str]:
    """uname("web") -> a unique, valid name such as "n3fa2w7web" (≤ 15 characters)."""

    def make(suffix: str = "") -> str:
        name = f"{RUN}{next(_counter):x}{suffix}"
        assert len(name) <= 15, f"test name too long: {name}"
        return name

    return make


@pytest.fixture(autouse=True)
def _leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail netns/system tests that leave namespaces, links, mounts, cgroups or processes."""
    tiers = {m.name for m in request.node.iter_markers()}
    if not IS_ROOT or not ({"netns", "system", "vm"} & tiers):
        yield
        return
    before = leaks.snapshot(RUN)
    yield
    after = leaks.wait_settled(RUN, before)
    leaked = leaks.diff(before, after)
    if leaked:
        leaks.force_cleanup(RUN, before)
        pytest.fail("leaked: " + "; ".join(leaked), pytrace=False)


@pytest.fixture
def netns(uname: Callable[[str], str]) -> Iterator[Callable[[str], str]]:
    """netns("x") creates a named namespace (/run/netns/NAME) and removes it after the test."""
    made: list[str] = []

    def create(suffix: str = "") -> str:
        name = uname(suffix)
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield create
    for name in reversed(made):
        subprocess.run(["ip", "netns", "del", name], check=False, stderr=subprocess.DEVNULL)


@pytest.fixture
def procs() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """procs(argv, ...) starts a process that is killed (by its PID, never by name) after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        p: subprocess.Popen[bytes] = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        stop_process(p)


def stop_process(p: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM the process we started (by its PID), SIGKILL after `timeout`, reap it."""
    with contextlib.suppress(ProcessLookupError):
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def wait_for(pred: Callable[[], object], timeout: float = 5.0, step: float = 0.02) -> object:
    """Poll pred() until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {pred}")
        time.sleep(step)


@pytest.fixture
def tmp_config(tmp_path: Path, uname: Callable[[str], str]) -> Callable[..., Path]:
    """tmp_config(extra_toml="") writes a netmux.toml whose names and paths are this run's."""

    def write(extra: str = "") -> Path:
        mux = uname("mux")
        p = tmp_path / "netmux.toml"
        p.write_text(
            f'[mux]\nnetns = "{mux}"\nuplinks = ["{RUN}u*"]\n'
            f'[paths]\nstate_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\n'
            f'workloads_dir = "{tmp_path}/workloads"\n' + extra
        )
        return p

    return write


REPO = Path(__file__).resolve().parent.parent
# What an unprivileged test process imports netmux with: netmux and the PyPI packages of
# the venv (Debian's python3-systemd and python3-nftables come with /usr/bin/python3).
_UNPRIVILEGED_PACKAGES = ("pyroute2", "dbus_next", "pyudev", "dns")


def _traversable(path: Path) -> bool:
    """Can any user reach `path` (o+x on every directory above it)?"""
    return all(p.stat().st_mode & 0o001 for p in (path, *path.parents))


@dataclass(frozen=True)
class Unprivileged:
    """How to run Python that imports netmux as another user: (python, PYTHONPATH)."""

    python: str
    pythonpath: str

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "PYTHONPATH": self.pythonpath, "HOME": "/", **extra}


@pytest.fixture(scope="session")
def unprivileged() -> Iterator[Unprivileged]:
    """A readable interpreter and import path for tests that run Python as `nobody`.

    A checkout may live under /root (mode 0700): then the venv is out of reach for other
    users, so netmux and the venv's packages are copied into a world-readable directory
    of this run, used with Debian's /usr/bin/python3 (the venv's own base interpreter).
    """
    site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
    if _traversable(REPO) and _traversable(site):
        yield Unprivileged(sys.executable, f"{REPO}:{site}")
        return
    copy = Path(tempfile.mkdtemp(prefix=f"{RUN}py."))
    try:
        copy.chmod(0o755)
        shutil.copytree(REPO / "netmux", copy / "netmux",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        for pkg in _UNPRIVILEGED_PACKAGES:
            shutil.copytree(site / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        for p in copy.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        yield Unprivileged("/usr/bin/python3", str(copy))
    finally:
        shutil.rmtree(copy, ignore_errors=True)


_session_before: leaks.Snapshot | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _session_before
    if IS_ROOT:
        _session_before = leaks.snapshot(RUN)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every fixture is torn down, the run must have left nothing with its prefix."""
    if _session_before is None:
        return
    after = leaks.wait_settled(RUN, _session_before)
    leaked = leaks.diff(_session_before, after)
    if leaked:
        leaks.force_cleanup(RUN, _session_before)
        print(f"\nnetmux test run {RUN} leaked: " + "; ".join(leaked))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
