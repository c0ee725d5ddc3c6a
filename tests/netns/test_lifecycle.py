"""Lifecycle you can trust: ownership marks, instance tokens, teardown that always completes,
processes that end with their workload, repair, mux/lab refusing to strand workloads."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import crash
from netmux import config, links, mux, nsutil, workload
from tests import muxfix
from tests.conftest import RUN, wait_for
from tests.muxfix import MuxEnv
from tests.netns.test_workload import assert_gone, world

pytestmark = [pytest.mark.netns, pytest.mark.requires("radvd", "nft")]

mux_radvd_module = muxfix.mux_radvd_module
mux_radvd = muxfix.mux_radvd


@pytest.fixture
def env(mux_radvd_module: MuxEnv) -> MuxEnv:
    return mux_radvd_module


wname = muxfix.wname


@pytest.fixture
def foreign(uname: Callable[[str], str]) -> Iterator[Callable[[], str]]:
    """foreign() -> a namespace made with `ip netns add`, not by netmux; deleted after."""
    made: list[str] = []

    def make() -> str:
        n = uname("f")
        subprocess.run(["ip", "netns", "add", n], check=True)
        made.append(n)
        return n

    yield make
    for n in made:
        subprocess.run(["ip", "netns", "del", n], check=False)


def _paused_up(env: MuxEnv, name: str) -> tuple[int, Callable[[], int]]:
    """Fork a child that runs `up NAME` in-process and stops right after its namespace and
    link exist (before the sysctls). (pid, resume() -> the child's exit status)."""
    reached_r, reached_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            real = links.sysctl_write

            def pause(netns: object, items: list[tuple[str, str]]) -> None:
                os.write(reached_w, b"x")
                os.read(go_r, 1)
                real(netns, items)  # type: ignore[arg-type]

            links.sysctl_write = pause  # type: ignore[assignment]
            workload.up(env.host, config.workload_from(name), (), exec_cmd=False)
            code = 0
        finally:
            os._exit(code)
    os.close(reached_w)
    os.close(go_r)
    assert os.read(reached_r, 1) == b"x"
    os.close(reached_r)

    def resume() -> int:
        with contextlib.suppress(BrokenPipeError):  # the child was killed meanwhile
            os.write(go_w, b"x")
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
        return status

    return pid, resume


def _lo_alias(netns: str) -> str:
    return subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show", "lo"], capture_output=True, text=True
    ).stdout


# --- ownership ------------------------------------------------------------------------


def test_down_and_up_never_touch_a_namespace_netmux_did_not_make(
    env: MuxEnv, foreign: Callable[[], str], procs: Callable[..., subprocess.Popen[bytes]]
) -> None:
    bare = foreign()  # only lo inside: still not netmux's
    busy = foreign()
    p = procs(["ip", "netns", "exec", busy, "sleep", "300"])
    wait_for(lambda: nsutil.pids_in_netns(busy))
    for n in (bare, busy):
        r = env.netmux("down", n, check=False)
        assert r.returncode == 1 and "was not made by netmux" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        r = env.netmux("up", n, check=False)
        assert r.returncode == 1 and "was not made by netmux" in r.stderr, r.stderr
        assert nsutil.is_netns(nsutil.netns_path(n))
        assert not workload.state_path(env.host, n).exists()
    assert p.poll() is None  # someone else's process was left alone


def test_the_mark_is_on_the_namespace_before_it_has_a_name(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    n = wname()
    pid, resume = _paused_up(env, n)
    try:
        st = workload.read_state(env.host, n)
        assert st is not None and st["phase"] == "building" and st["kind"] == "process"
        assert f"alias netmux:{st['token']}" in _lo_alias(n)
        assert workload.status(env.host, n)["state"] == "building"
        assert workload.status(env.host, n)["kind"] == "process"  # the same kind once up
    finally:
        os.kill(pid, signal.SIGKILL)
        resume()
    assert workload.status(env.host, n)["state"] == "half-built"
    env.netmux("down", n)
    assert_gone(env, n)


def test_a_stale_up_only_ever_touches_its_own_instance(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    """up paused mid-build, down + up again, then the first one resumes: its rollback must
    leave the new instance (namespace, state, firewall) exactly as it was."""
    n = wname()
    _, resume = _paused_up(env, n)
    env.netmux("down", n)
    env.netmux("up", n, "--port", "tcp/80")
    new_id = nsutil.netns_id(n)
    new_state = workload.read_state(env.host, n)
    status = resume()
    assert not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)  # it failed
    assert nsutil.netns_id(n) == new_id
    assert workload.read_state(env.host, n) == new_state
    assert new_state is not None and f"netmux:{new_state['token']}" in _lo_alias(n)
    assert workload.status(env.host, n)["state"] == "up"
    rules = subprocess.run(
        ["ip", "netns", "exec", n, "nft", "list", "ruleset"], capture_output=True, text=True
    ).stdout
    assert "dport 80" in rules
    env.netmux("down", n)
    assert_gone(env, n)


# --- teardown that always completes, repair --------------------------------------------


def test_ifname_lo_is_refused_by_the_config_check(tmp_path: Path) -> None:
    cfg = tmp_path / "netmux.toml"
    cfg.write_text('[workload]\nifname = "lo"\n')
    r = subprocess.run(
        [sys.executable, "-m", "netmux.cli", "--config", str(cfg), "config"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "workload.ifname: 'lo' is not allowed" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_down_goes_on_past_a_link_it_cannot_delete_and_a_second_down_finishes(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    """The state names a link the kernel refuses to delete (lo: EOPNOTSUPP): every other
    step still runs, and the exit says what is left."""
    n = wname()
    env.netmux("up", n)
    path = workload.state_path(env.host, n)
    st = json.loads(path.read_text())
    path.write_text(json.dumps({**st, "ifname": "lo"}))
    r = env.netmux("down", n, check=False)
    assert r.returncode == 1 and "down left link lo" in r.stderr, r.stderr
    assert not links.netns_exists(n) and not path.exists()
    r = env.netmux("down", n, check=False)
    assert r.returncode == 0, r.stderr
    assert_gone(env, n)


def test_up_repairs_a_half_built_or_link_less_workload_of_its_own(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    n = wname()
    pid, resume = _paused_up(env, n)
    os.kill(pid, signal.SIGKILL)
    resume()
    assert workload.status(env.host, n)["state"] == "half-built"
    env.netmux("up", n)
    assert workload.status(env.host, n)["state"] == "up"
    addr = env.global_address(n)
    subprocess.run(["ip", "-n", n, "link", "del", "eth0"], check=True)
    assert workload.status(env.host, n)["state"] == "no-link"
    env.netmux("up", n)
    assert workload.status(env.host, n)["state"] == "up"
    assert env.global_address(n) == addr  # same name, same address
    r = env.netmux("up", n, check=False)
    assert r.returncode == 1 and "is already up" in r.stderr


def test_wait_none_is_up_not_degraded(env: MuxEnv, wname: Callable[[], str]) -> None:
    n = wname()
    env.netmux("up", n, "--wait", "none")
    st = workload.status(env.host, n)
    assert st["state"] == "up" and st["kind"] == "process"


# --- processes end with the workload ---------------------------------------------------


def test_down_stops_every_process_in_the_namespace_and_status_lists_them(
    env: MuxEnv, wname: Callable[[], str], procs: Callable[..., subprocess.Popen[bytes]]
) -> None:
    n = wname()
    env.netmux("up", n)
    # one that ignores SIGTERM: killed after the grace period
    p = procs([*env.argv("exec", n), "--", "sh", "-c", "trap '' TERM; sleep 300 & wait"])
    wait_for(
        lambda: any(x["command"] == "sleep" for x in workload.status(env.host, n)["processes"])
    )
    r = env.netmux("status", n)
    assert "process " in r.stdout and "sleep" in r.stdout
    inside = nsutil.pids_in_netns(n)
    env.netmux("down", n)
    p.wait(timeout=30)
    for pid in inside:
        assert not os.path.exists(f"/proc/{pid}/ns/net")
    assert_gone(env, n)


def test_a_sigkilled_run_takes_its_workload_and_command_with_it(
    env: MuxEnv, wname: Callable[[], str], procs: Callable[..., subprocess.Popen[bytes]]
) -> None:
    n = wname()
    before = world(env)
    p = procs([*env.argv("run", n), "--", "sleep", "300"], stderr=subprocess.DEVNULL)
    wait_for(lambda: nsutil.pids_in_netns(n), timeout=20)
    (cmd,) = nsutil.pids_in_netns(n)
    p.kill()
    p.wait()
    wait_for(lambda: not os.path.lexists(nsutil.netns_path(n)), timeout=20)
    wait_for(lambda: not os.path.exists(f"/proc/{cmd}/ns/net"))
    wait_for(lambda: world(env) == before)
    assert_gone(env, n)


# --- mux and lab ---------------------------------------------------------------------


def test_mux_down_refuses_while_workloads_exist_unless_forced(mux_radvd: MuxEnv) -> None:
    env = mux_radvd
    a, b = env.name("wa"), env.name("wb")
    env.netmux("up", a)
    env.netmux("up", b)
    r = env.netmux("mux", "down", check=False)
    assert r.returncode == 1 and a in r.stderr and b in r.stderr and "--force" in r.stderr
    assert mux.exists(env.host) and workload.status(env.host, a)["state"] == "up"
    env.netmux("mux", "down", "--force")
    assert not mux.exists(env.host)
    for n in (a, b):
        assert not links.netns_exists(n) and not workload.state_path(env.host, n).exists()


def test_mux_up_and_down_leave_a_namespace_netmux_did_not_make(
    foreign: Callable[[], str], tmp_path: Path
) -> None:
    ns = foreign()
    path = muxfix.write_config(tmp_path, ns)
    cli = [sys.executable, "-m", "netmux.cli", "--config", str(path), "mux"]
    for action in ("up", "down"):
        r = subprocess.run([*cli, action], capture_output=True, text=True)
        assert r.returncode == 1 and "was not made by netmux" in r.stderr, r.stderr
    assert nsutil.is_netns(nsutil.netns_path(ns))
    out = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
    assert len(out.splitlines()) == 1  # still only its lo: nothing was added


# --- the crash test --------------------------------------------------------------------


def test_random_kills_inside_up_and_down_leave_nothing(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    """The short version of bench/crash.py (1000 cycles there): kills at uniformly random
    points of an in-process up + down, each finished by `down` or a repairing `up`."""
    n = wname()
    before = world(env)
    res = crash.crash_cycles(env.host, n, 60, random.Random(RUN))
    assert res.leaks == []
    assert res.killed > 10
    inside = sum(c for what, c in res.left_by_kill.items() if "namespace" in what)
    assert inside > 0, res.left_by_kill  # the kills landed inside the build too
    assert world(env) == before


# --- a lost host key -------------------------------------------------------------------


def test_a_lost_host_key_is_reported_loudly(env: MuxEnv, wname: Callable[[], str]) -> None:
    from netmux import doctor

    a, b = wname(), wname()
    env.netmux("up", a)
    assert doctor.probe_host_key(env.host) == (True, ())
    key = env.host.paths.host_key
    old = key.read_bytes()
    key.unlink()
    try:
        assert doctor.probe_host_key(env.host) == (False, (a,))
        r = env.netmux("up", b)
        assert f"workload(s) {a} were made with" in r.stderr and "restore" in r.stderr
        assert doctor.probe_host_key(env.host) == (True, (a,))
        facts = doctor.Facts(other_key=(a,))
        check = {c.id: c for c in doctor.evaluate(facts, env.host)}["host_key"]
        assert check.status == "fail" and str(key) in check.fix
        env.netmux("down", b)
    finally:
        key.write_bytes(old)
    assert doctor.probe_host_key(env.host) == (True, ())


def test_the_end_of_run_stops_what_its_command_left_behind(
    env: MuxEnv, wname: Callable[[], str]
) -> None:
    n = wname()
    before = world(env)
    r = env.netmux("run", n, "--", "sh", "-c", "sleep 300 & echo $!")
    orphan = int(r.stdout.split()[-1])
    assert not os.path.exists(f"/proc/{orphan}/ns/net")  # stopped before `run` returned
    assert world(env) == before


def test_a_mux_from_before_marks_is_recognised_by_its_gateway_and_marked(
    mux_radvd: MuxEnv,
) -> None:
    env = mux_radvd
    subprocess.run(["ip", "-n", env.netns, "link", "set", "lo", "alias", ""], check=True)
    assert links.read_mark(env.netns) is None
    env.netmux("mux", "up")
    assert links.read_mark(env.netns) == mux.MUX_MARK
