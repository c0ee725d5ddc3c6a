"""supervise: real processes started, found, stopped by PID, idempotently; radvd in a netns."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux.errors import StateError, UsageError
from netmux.lab import supervise

pytestmark = pytest.mark.netns


def test_start_status_stop_idempotent(tmp_path: Path) -> None:
    run = tmp_path / "run"
    d = supervise.start("sleeper", ["sleep", "60"], None, run)
    try:
        assert d.alive
        assert (run / "sleeper.pid").read_text().strip() == str(d.pid)
        assert supervise.status("sleeper", run) == d
        # a second start returns the running one, not a new process
        assert supervise.start("sleeper", ["sleep", "60"], None, run).pid == d.pid
    finally:
        assert supervise.stop("sleeper", run) is True
    assert supervise.status("sleeper", run) is None
    assert not Path(f"/proc/{d.pid}/stat").exists() or not d.alive
    assert not (run / "sleeper.pid").exists()
    assert supervise.stop("sleeper", run) is False  # idempotent


def test_stale_record_is_not_signalled(tmp_path: Path) -> None:
    """A recorded PID whose start time differs (a recycled PID) is left alone."""
    run = tmp_path / "run"
    d = supervise.start("sleeper", ["sleep", "60"], None, run)
    state = run / "sleeper.json"
    real = state.read_text()
    state.write_text(real.replace(f'"starttime": {d.starttime}', '"starttime": 1'))
    try:
        assert supervise.status("sleeper", run) is None
        assert supervise.stop("sleeper", run) is False  # forgets the stale record
        assert d.alive
        assert not state.exists()
    finally:
        state.write_text(real)
        assert supervise.stop("sleeper", run) is True


def test_sigterm_ignored_gets_sigkill(tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    d = supervise.start("stubborn", [sys.executable, "-c", code], None, run, settle=0.2)
    assert supervise.stop("stubborn", run, timeout=0.3) is True
    assert not d.alive


def test_a_daemon_that_dies_at_start_is_reported_and_not_recorded(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(StateError, match="exited at start: boom"):
        supervise.start("dies", ["sh", "-c", "echo boom; exit 3"], None, run, settle=0.3)
    assert supervise.status("dies", run) is None
    assert not (run / "dies.pid").exists()
    with pytest.raises(StateError, match="cannot run"):
        supervise.start("nope", ["/nonexistent/daemon"], None, run)
    with pytest.raises(UsageError):
        supervise.start("../evil", ["sleep", "1"], None, run)


def test_forking_daemon_is_found_by_its_pidfile(tmp_path: Path) -> None:
    run = tmp_path / "run"
    pidfile = tmp_path / "d.pid"
    script = f"sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {pidfile}"
    d = supervise.start("forker", ["sh", "-c", script], None, run, pidfile=pidfile, forks=True)
    assert d.pid == int(pidfile.read_text())
    assert supervise.stop("forker", run) is True
    assert not d.alive


def test_in_a_netns(tmp_path: Path, netns: Callable[[str], str]) -> None:
    ns = netns("sv")
    run = tmp_path / "run"
    d = supervise.start("sleeper", ["sleep", "60"], ns, run)
    try:
        assert os.readlink(f"/proc/{d.pid}/ns/net") == _ns_id(ns)
    finally:
        supervise.stop("sleeper", run)
    with pytest.raises(StateError, match="does not exist"):
        supervise.start("sleeper", ["sleep", "60"], "nonexistent-ns", run)


def _ns_id(name: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", name, "readlink", "/proc/self/ns/net"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@pytest.mark.requires("radvd")
def test_radvd_in_a_netns(tmp_path: Path, netns: Callable[[str], str]) -> None:
    ns = netns("rv")
    subprocess.run(
        ["ip", "-n", ns, "link", "add", "g", "type", "veth", "peer", "name", "h"], check=True
    )
    subprocess.run(["ip", "-n", ns, "link", "set", "g", "up"], check=True)
    conf = tmp_path / "radvd.conf"
    conf.write_text("interface g {\n  AdvSendAdvert on;\n  prefix ::/64 {\n  };\n};\n")
    pidfile = tmp_path / "radvd.pid"
    argv = ["radvd", "-n", "-m", "stderr", "-C", str(conf), "-p", str(pidfile)]
    run = tmp_path / "run"
    d = supervise.start("radvd", argv, ns, run, pidfile=pidfile)
    try:
        assert d.alive
        assert supervise.start("radvd", argv, ns, run) == d
    finally:
        assert supervise.stop("radvd", run)
    assert "radvd" in (run / "radvd.log").read_text()
