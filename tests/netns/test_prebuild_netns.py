"""Building ahead (netmux/workload.py `prebuild`, what the launcher does as systemd starts
a netmux@ unit: netmux/unitwatch.py), against a real mux + radvd: the `up` that wants the
same build takes the very namespace built ahead; one with other settings gets a build of
its own and the early one is removed; one nobody claims is removed to the last file; one
that ExecStopPost's `down` removed meanwhile is not used; a failed one fails its `up`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux import config, nsutil, workload
from netmux.errors import NetmuxError
from tests import muxfix
from tests.muxfix import MuxEnv
from tests.netns.test_workload import assert_gone, world

pytestmark = pytest.mark.netns

mux_radvd_module = muxfix.mux_radvd_module
wname = muxfix.wname


@pytest.fixture
def env(mux_radvd_module: MuxEnv) -> MuxEnv:
    return mux_radvd_module


@pytest.fixture(autouse=True)
def _nothing_held() -> object:
    yield
    workload.discard_prebuilt()  # a failed test's build ahead, removed with its name


def _wl(env: MuxEnv, name: str, **environ: str) -> config.WorkloadConfig:
    return config.load_workload(env.host, name, env=environ)


def _ino(name: str) -> int:
    return os.stat(nsutil.netns_path(name)).st_ino


def _ruleset(name: str) -> str:
    return subprocess.run(["ip", "netns", "exec", name, "nft", "list", "ruleset"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def test_up_takes_the_build_ahead(env: MuxEnv, wname: Callable[[], str]) -> None:
    n = wname()
    pre = workload.prebuild(env.host, n)
    assert pre is not None and pre.inst is not None and pre.error is None
    st = workload.read_state(env.host, n) or {}
    assert st["phase"] == "building" and st["pid"] == os.getpid()
    ino = _ino(n)
    # The unit's User= (its $USER) and a command do not change the build: still taken.
    assert workload.up(env.host, _wl(env, n, NETMUX_USER="nobody"), exec_cmd=False) == 0
    st = workload.read_state(env.host, n) or {}
    assert st["phase"] == "up" and st["token"] == pre.inst.token
    assert _ino(n) == ino
    assert workload.status(env.host, n)["state"] == "up"


def test_other_settings_get_a_build_of_their_own(env: MuxEnv, wname: Callable[[], str]) -> None:
    n = wname()
    pre = workload.prebuild(env.host, n)
    assert pre is not None and pre.inst is not None
    assert "8080" not in _ruleset(n)
    ino = _ino(n)
    workload.up(env.host, _wl(env, n, NETMUX_PORTS="tcp/8080"), exec_cmd=False)
    st = workload.read_state(env.host, n) or {}
    assert st["token"] != pre.inst.token
    assert _ino(n) != ino  # the early namespace is gone, a new one has the name
    assert "8080" in _ruleset(n)


def test_unclaimed_build_is_removed_entirely(env: MuxEnv, wname: Callable[[], str]) -> None:
    before = world(env)
    n = wname()
    pre = workload.prebuild(env.host, n)
    assert pre is not None and pre.inst is not None
    assert world(env) != before
    workload.discard_prebuilt()
    assert_gone(env, n)
    assert world(env) == before
    assert not os.path.exists(f"/proc/self/fd/{pre.inst.fd}")


def test_removed_meanwhile_is_not_used(env: MuxEnv, wname: Callable[[], str]) -> None:
    """A unit that fails before its `netmux up`: ExecStopPost's `down` removes the build
    ahead; should an `up` come after all, it builds afresh."""
    n = wname()
    pre = workload.prebuild(env.host, n)
    assert pre is not None and pre.inst is not None
    assert workload.down(env.host, n)
    assert_gone(env, n)
    workload.up(env.host, _wl(env, n), exec_cmd=False)
    st = workload.read_state(env.host, n) or {}
    assert st["phase"] == "up" and st["token"] != pre.inst.token
    assert workload.status(env.host, n)["state"] == "up"


def test_nothing_ahead_for_a_workload_that_is_up(env: MuxEnv, wname: Callable[[], str]) -> None:
    n = wname()
    workload.up(env.host, _wl(env, n), exec_cmd=False)
    token = (workload.read_state(env.host, n) or {})["token"]
    assert workload.prebuild(env.host, n) is None
    assert (workload.read_state(env.host, n) or {})["token"] == token
    assert workload.prebuild(env.host, "Bad_Name!") is None


def test_a_failed_build_ahead_fails_its_up_the_same_way(tmp_path: Path) -> None:
    with muxfix.running_mux(tmp_path / "m", radvd=False) as env:
        before = world(env)
        n = env.name("f")
        env.host.paths.workloads_dir.mkdir(parents=True, exist_ok=True)
        (env.host.paths.workloads_dir / f"{n}.toml").write_text("timeout = 0.5\n")
        pre = workload.prebuild(env.host, n)
        assert pre is not None and pre.error is not None and pre.inst is None
        assert_gone(env, n)
        with pytest.raises(NetmuxError) as got:
            workload.up(env.host, _wl(env, n), exec_cmd=False)
        assert got.value is pre.error  # not a second wait for the same timeout
        assert world(env) == before
