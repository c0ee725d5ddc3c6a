"""The warm launcher (netmux/launcher.py) and its client (netmux/launch.py), for real: the
`netmux` command with a launcher listening builds the workload in the launcher's fork, and
the command's own process becomes the workload (same PID, in the namespace, with its
resolv.conf), relays sd_notify from its PID, and exits with the worker's status."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmux import nsutil, workload
from tests import muxfix
from tests.conftest import stop_process
from tests.muxfix import MuxEnv

pytestmark = pytest.mark.netns

mux_radvd_module = muxfix.mux_radvd_module


@pytest.fixture(scope="module")
def launcher(mux_radvd_module: MuxEnv) -> Iterator[Path]:
    sock = mux_radvd_module.tmp / "launch.sock"
    env = mux_radvd_module.env()
    proc = subprocess.Popen([sys.executable, "-m", "netmux", "launcher", "--socket", str(sock)],
                            env=env, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, "the launcher exited"
            assert time.monotonic() < deadline, "the launcher never listened"
            time.sleep(0.02)
        yield sock
    finally:
        stop_process(proc)
    assert not sock.exists() or _refused(sock)


def _refused(sock: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(str(sock))
    except OSError:
        return True
    finally:
        s.close()
    return False


def _env(mux: MuxEnv, sock: Path, **extra: str) -> dict[str, str]:
    return {**mux.env(), "NETMUX_LAUNCH_SOCKET": str(sock), **extra}


def _netmux(mux: MuxEnv, sock: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "netmux", *args], env=_env(mux, sock),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_up_through_the_launcher_becomes_the_command(
    mux_radvd_module: MuxEnv, launcher: Path
) -> None:
    mux = mux_radvd_module
    name = mux.name()
    script = "echo pid=$$; readlink /proc/self/ns/net; cat /etc/resolv.conf"
    p = _netmux(mux, launcher, "up", name, "--", "sh", "-c", script)
    try:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        ino = os.stat(nsutil.netns_path(name)).st_ino
        assert f"pid={p.pid}" in out  # the command is the `netmux` process itself
        assert f"net:[{ino}]" in out  # in the workload's namespace
        st = workload.read_state(mux.host, name) or {}
        assert st.get("pid") == p.pid  # the state names the command, not the worker
        assert "launcher worker" not in err
    finally:
        r = _netmux(mux, launcher, "down", name)
        r.communicate(timeout=30)
        assert r.returncode == 0
    assert not nsutil.netns_path(name).exists()


def test_errors_come_back_as_one_line_and_the_worker_status(
    mux_radvd_module: MuxEnv, launcher: Path
) -> None:
    mux = mux_radvd_module
    name = mux.name()
    p = _netmux(mux, launcher, "up", name, "--port", "tcp/99999")
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "99999" in lines[0] and "Traceback" not in err, err
    assert not nsutil.netns_path(name).exists()
    p = _netmux(mux, launcher, "status", name)
    _out, err = p.communicate(timeout=30)
    assert p.returncode != 0 and "Traceback" not in err


def test_ready_and_the_fd_store_come_from_the_unit_main_process(
    mux_radvd_module: MuxEnv, launcher: Path, tmp_path: Path
) -> None:
    """A command-less `up` under a unit: READY=1 and STATUS= are sent by the `netmux`
    process (systemd takes them from the main PID only), which then holds the unit as
    `sleep infinity` under the same PID."""
    mux = mux_radvd_module
    name = mux.name()
    addr = str(tmp_path / "notify")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(addr)
    ns.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    ns.settimeout(30)
    env = _env(mux, launcher, NOTIFY_SOCKET=addr, INVOCATION_ID="0" * 32)
    p = subprocess.Popen([sys.executable, "-m", "netmux", "up", name], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        senders = []
        while True:
            data, anc, _, _ = ns.recvmsg(4096, socket.CMSG_SPACE(12))
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    senders.append(int.from_bytes(payload[:4], sys.byteorder))
            if b"READY=1" in data:
                break
        assert senders and set(senders) == {p.pid}
        assert b"STATUS=" in data and b"ula fd64:cafe::" in data
        deadline = time.monotonic() + 10
        while Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")[0] != (
            f"netmux-hold-{name}".encode()
        ):
            assert time.monotonic() < deadline, "the unit's process did not become the hold"
            time.sleep(0.02)
    finally:
        ns.close()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        r = _netmux(mux, launcher, "down", name)
        r.communicate(timeout=30)
    assert not nsutil.netns_path(name).exists()


def test_without_a_launcher_the_command_does_the_work_itself(
    mux_radvd_module: MuxEnv, tmp_path: Path
) -> None:
    mux = mux_radvd_module
    name = mux.name()
    p = _netmux(mux, tmp_path / "nobody-listens", "up", name, "--", "sh", "-c", "echo pid=$$")
    out, err = p.communicate(timeout=60)
    try:
        assert p.returncode == 0, err
        assert f"pid={p.pid}" in out
    finally:
        mux.netmux("down", name)
