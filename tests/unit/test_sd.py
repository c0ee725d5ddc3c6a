"""netmux.sd: sd_listen_fds parsing and sd_notify over a real AF_UNIX datagram socket."""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmux import sd

pytestmark = pytest.mark.unit


@pytest.fixture
def fd3() -> Iterator[int]:
    """Something open at fd 3 (SD_LISTEN_FDS_START) for the parser to adopt, inheritable
    like an fd systemd passed."""
    saved = os.dup(3) if _is_open(3) else None
    r, w = os.pipe()
    os.dup2(r, 3, inheritable=True)
    os.close(r)
    try:
        yield 3
    finally:
        os.close(w)
        if saved is not None:
            os.dup2(saved, 3, inheritable=False)
            os.close(saved)
        else:
            os.close(3)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_listen_fds_adopts_names_and_makes_them_non_inheritable(fd3: int) -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "l.1.0"}
    assert os.get_inheritable(fd3)
    assert sd.listen_fds(env) == [("l.1.0", 3)]
    assert not os.get_inheritable(fd3)
    assert env == {}  # unset: a child must not take them for its own


def test_listen_fds_missing_names_are_unknown_and_unset_false_keeps_env(fd3: int) -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
    assert sd.listen_fds(env, unset=False) == [("unknown", 3)]
    assert env["LISTEN_FDS"] == "1"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LISTEN_PID": "1", "LISTEN_FDS": "2"},  # meant for another process
        {"LISTEN_PID": "x", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "<self>", "LISTEN_FDS": "two"},
        {"LISTEN_PID": "<self>", "LISTEN_FDS": "-1"},
        {"LISTEN_PID": "<self>", "LISTEN_FDS": "0", "LISTEN_FDNAMES": ""},
    ],
)
def test_listen_fds_refuses_what_is_not_ours(env: dict[str, str]) -> None:
    env = {k: (str(os.getpid()) if v == "<self>" else v) for k, v in env.items()}
    assert sd.listen_fds(env) == []
    assert not set(env) & set(sd.LISTEN_VARS)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    s.bind(str(path))
    s.settimeout(5)
    try:
        yield s, {"NOTIFY_SOCKET": str(path)}
    finally:
        s.close()


def test_notify_sends_key_value_lines(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    s, env = notify_socket
    assert sd.notify(env, ready="1", status="serving 2")
    assert s.recv(4096) == b"READY=1\nSTATUS=serving 2"


def test_notify_to_an_abstract_socket() -> None:
    name = f"netmux-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert sd.notify({"NOTIFY_SOCKET": "@" + name}, stopping="1")
        assert s.recv(4096) == b"STOPPING=1"


def test_notify_outside_systemd_is_a_no_op() -> None:
    assert not sd.notify({}, ready="1")
    assert not sd.notify({"NOTIFY_SOCKET": "relative"}, ready="1")
    assert not sd.Notifier({}).enabled


def test_notify_to_a_gone_socket_is_false(tmp_path: Path) -> None:
    assert not sd.notify({"NOTIFY_SOCKET": str(tmp_path / "gone")}, ready="1")


def test_fd_store_passes_the_fd_with_its_name(
    notify_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    s, env = notify_socket
    n = sd.Notifier(env)
    r, w = os.pipe()
    try:
        n.store("l.1.0", r)
        msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(4))
        assert msg == b"FDSTORE=1\nFDNAME=l.1.0"
        fds = array.array("i")
        fds.frombytes(anc[0][2])
        got = fds[0]
        assert os.fstat(got).st_ino == os.fstat(r).st_ino
        os.close(got)
        n.remove("l.1.0")
        assert s.recv(4096) == b"FDSTOREREMOVE=1\nFDNAME=l.1.0"
        with pytest.raises(ValueError):
            n.store("bad:name", r)
    finally:
        n.close()
        os.close(r)
        os.close(w)


def test_nsfs_type_of_a_netns_and_of_other_fds() -> None:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        assert sd.is_netns(fd) and sd.ns_type(fd) == sd.CLONE_NEWNET
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        assert sd.ns_type(r) == 0 and not sd.is_netns(r)
    finally:
        os.close(r)
        os.close(w)


def test_unit_of_a_process_that_is_gone() -> None:
    assert sd.unit_of(2**22 + 1) == ""
