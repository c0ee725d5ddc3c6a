"""A running mux with radvd and a static global prefix, for any slice's netns tests.

Use it from a test module:

    from tests import muxfix
    from tests.muxfix import MuxEnv

    mux_radvd = muxfix.mux_radvd  # pytest finds fixtures by module attribute

    def test_x(mux_radvd: MuxEnv) -> None:
        r = mux_radvd.netmux("up", "web")          # the real CLI, as a subprocess
        ...

`mux_radvd` is per test; `mux_radvd_module` is shared by a module's tests (set up before
the first test's leak snapshot, torn down after the last). Both give a MuxEnv: the host
config (this run's own netns names and tmp paths), its file, radvd's process, and helpers.
At teardown every workload still up is brought down, radvd is stopped by its PID, and mux
is removed, so the leak check sees nothing.

Addresses: gw0 has fd64:cafe::1/64 (ULA) and 2001:db8:0:1::1/64 (static "global" prefix,
documentation range); radvd advertises both (`prefix ::/64`).

For a variant, use the context manager directly: `running_mux(tmp, extra="[workload]\n...",
radvd=False, static=False, mux_extra='parent_kind = "bridge"')`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netmux import config, mux, muxctl, renumber, workload
from netmux.render import radvd as radvd_render
from tests.conftest import RUN, stop_process

STATIC_PREFIX = "2001:db8:0:1::/64"
STATIC_GW = "2001:db8:0:1::1/64"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class MuxEnv:
    host: config.HostConfig
    config_path: Path
    tmp: Path
    radvd: subprocess.Popen[bytes] | None

    @property
    def netns(self) -> str:
        return self.host.mux.netns

    def name(self, suffix: str = "") -> str:
        """A fresh workload name carrying the run prefix (≤ 15 characters)."""
        n = f"{RUN}{secrets.token_hex(2)}{suffix}"
        assert len(n) <= 15, n
        return n

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NETMUX_CONFIG"] = str(self.config_path)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        for k in list(env):
            if k.startswith("NETMUX_") and k not in ("NETMUX_CONFIG", "NETMUX_TEST_RUN"):
                del env[k]
        env.pop("NOTIFY_SOCKET", None)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "netmux.cli", "--config", str(self.config_path), *args]

    def netmux(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 30,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real `netmux` CLI with this mux's config (and `env` on top); output
        captured as text."""
        r = subprocess.run(self.argv(*args), env={**self.env(), **(env or {})},
                           capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if check and r.returncode != 0:
            raise AssertionError(
                f"netmux {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}"
            )
        return r

    def status(self, name: str) -> dict[str, object]:
        return workload.status(self.host, name)

    def global_address(self, name: str) -> str:
        """The workload's first global address, without prefix length or state."""
        addrs = workload.status(self.host, name)["addresses"]
        assert isinstance(addrs, dict) and addrs["global"], f"{name} has no global address"
        return str(addrs["global"][0]).split("/")[0]

    def reload_radvd(self) -> None:
        """Re-render radvd.conf from gw0's prefixes now (as the dhcpcd hook does) and HUP."""
        assert self.radvd is not None
        (self.tmp / "radvd.conf").write_text(radvd_conf(self.host))
        self.radvd.send_signal(signal.SIGHUP)

    def down_all(self) -> None:
        for name in workload.known(self.host):
            workload.down(self.host, name)


def write_config(
    tmp: Path, mux_name: str, extra: str = "", static: bool = True, mux_extra: str = ""
) -> Path:
    """netmux.toml for this run: own mux name, uplink pattern RUN + "u*", tmp paths.

    `extra` is appended (further sections); `mux_extra` goes into [mux] (e.g.
    'parent_kind = "bridge"'); `static=False` leaves gw0 with the ULA only.
    """
    p = tmp / "netmux.toml"
    p.write_text(
        f'[mux]\nnetns = "{mux_name}"\nuplinks = ["{RUN}u*"]\n'
        + (f'static_addresses = ["{STATIC_GW}"]\n' if static else "")
        + (mux_extra.rstrip("\n") + "\n" if mux_extra else "")
        + f'[paths]\nstate_dir = "{tmp}/state"\nrun_dir = "{tmp}/run"\n'
        f'workloads_dir = "{tmp}/workloads"\n' + extra
    )
    return p


def radvd_conf(host: config.HostConfig) -> str:
    """radvd.conf advertising the prefixes gw0 has now (radvd renders explicit blocks)."""
    leases = renumber.gateway_leases(host.mux.gateway, host.mux.netns)
    return radvd_render.render(host, leases=leases)


def start_radvd(host: config.HostConfig, tmp: Path) -> subprocess.Popen[bytes]:
    """radvd in mux with the rendered config, in the foreground (its PID is ours)."""
    conf = tmp / "radvd.conf"
    conf.write_text(radvd_conf(host))
    pidfile = tmp / "radvd.pid"
    log = (tmp / "radvd.log").open("wb")
    p = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{host.mux.netns}", "radvd", "-n", "-C", str(conf),
         "-p", str(pidfile), "-m", "stderr"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    deadline = time.monotonic() + 5
    while not pidfile.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            stop(p)
            raise RuntimeError(f"radvd did not start: {(tmp / 'radvd.log').read_text()}")
        time.sleep(0.01)
    return p


stop = stop_process  # radvd and friends: by the PID we started


@contextlib.contextmanager
def running_mux(
    tmp: Path, extra: str = "", radvd: bool = True, static: bool = True, mux_extra: str = ""
) -> Iterator[MuxEnv]:
    """Bring up this run's own mux (+ radvd); always tear everything down afterwards."""
    tmp.mkdir(parents=True, exist_ok=True)
    name = f"{RUN}m{secrets.token_hex(2)}"
    path = write_config(tmp, name, extra, static, mux_extra)
    host = config.load_host(path)
    env = MuxEnv(host, path, tmp, None)
    try:
        mux.up(host)
        if radvd:
            env.radvd = start_radvd(host, tmp)
        yield env
    finally:
        with contextlib.suppress(Exception):
            env.down_all()
        if env.radvd is not None:
            stop(env.radvd)
        muxctl.down(host, force=True)


@pytest.fixture
def mux_radvd(tmp_path: Path) -> Iterator[MuxEnv]:
    with running_mux(tmp_path / "mux") as env:
        yield env


@pytest.fixture(scope="module")
def mux_radvd_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MuxEnv]:
    with running_mux(tmp_path_factory.mktemp("mux")) as env:
        yield env


@pytest.fixture
def wname(env: MuxEnv) -> Iterator[Callable[[], str]]:
    """wname() -> a fresh workload name in the module's `env`; each is brought down after
    the test. Modules use it as `wname = muxfix.wname` next to an `env` fixture."""
    made: list[str] = []

    def make() -> str:
        n = env.name("w")
        made.append(n)
        return n

    yield make
    for n in made:
        workload.down(env.host, n)
