"""`netmux up NAME -- CMD` publishes through phonebookd: the real CLI, a real mux + radvd,
knotd and tinydns answering `dig`; kill -9 of the workload removes the records."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from netmux import workload
from tests import muxfix, phonebookfix
from tests.conftest import wait_for
from tests.muxfix import MuxEnv
from tests.phonebookfix import PUBLIC, Stack, nsrun

pytestmark = pytest.mark.netns

mux_radvd = muxfix.mux_radvd


stack = phonebookfix.stack


def _addresses(env: MuxEnv, name: str) -> dict[str, list[str]]:
    out = nsrun(name, ["ip", "-j", "-6", "addr", "show", "scope", "global"]).stdout
    got: dict[str, list[str]] = {"global": [], "ula": []}
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            if "local" not in a:
                continue
            kind = "ula" if a["local"].startswith("fd") else "global"
            if "tentative" not in a and "deprecated" not in a:
                got[kind].append(a["local"])
    return got


@pytest.fixture(params=["socket", "dbus"])
def via(request: pytest.FixtureRequest, mux_radvd: MuxEnv, stack: Stack) -> Iterator[str]:
    """`up`/`down` talk to the publish socket when one listens (the stack's, named in the
    config), else to D-Bus: "dbus" names a socket that refuses, as while phonebookd
    restarts (a bound socket nobody listens on)."""
    path = stack.publish_sock
    with contextlib.ExitStack() as cleanup:
        if request.param == "dbus":
            path = mux_radvd.tmp / "refusing.sock"
            refusing = cleanup.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            refusing.bind(str(path))
        with mux_radvd.config_path.open("a") as f:
            f.write(f'[phonebook]\nsocket = "{path}"\n')
        yield str(request.param)


def test_up_publishes_and_kill9_removes(mux_radvd: MuxEnv, stack: Stack, via: str) -> None:
    env = mux_radvd
    name = env.name("h")
    penv = env.env()
    penv["DBUS_SYSTEM_BUS_ADDRESS"] = stack.bus
    t0 = time.monotonic()
    p = subprocess.Popen(
        env.argv("up", name, "--", "sleep", "120"),
        env=penv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # `up` returns control to CMD (same PID) once the address is usable and published.
        deadline = time.monotonic() + 20
        while _comm(p.pid) != "sleep":
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "netmux up did not finish"
            time.sleep(0.005)
        t_ready = time.monotonic()
        st = workload.read_state(env.host, name)
        assert st is not None
        # Ready means resolvable: DAD is over (optimistic addresses are not published) and
        # both sinks answer at once, no waiting.
        addrs = _addresses(env, name)
        assert all(addrs.values()), nsrun(name, ["ip", "-6", "addr"]).stdout
        g, u = addrs["global"][0], addrs["ula"][0]
        assert g in stack.dig(f"{name}.{PUBLIC}").split()
        assert stack.dig(f"{name}.internal") == u
        if stack.want_tinydns:
            assert g in stack.dig(f"{name}.{PUBLIC}", server="127.0.0.1").split()
        print(f"\nnetmux up ready {t_ready - t0:.3f}s (up_seconds {st['up_seconds']})")
        assert set(st["dns"]) == {f"{name}.{PUBLIC}", f"{name}.internal"}
        # The exec'ed CMD holds the lifeline: netmux up is gone, the record stays.
        fds = os.listdir(f"/proc/{p.pid}/fd")
        kind = "socket:" if via == "socket" else "pipe:"
        assert any(kind in os.readlink(f"/proc/{p.pid}/fd/{fd}") for fd in fds)
        assert f"on eth0 in {name}\n" in stack.log()  # labelled by its netns, either way
        # Renumbering: a new prefix on gw0 (radvd re-rendered and HUPed, as the dhcpcd hook
        # does), the old one deprecated as an RA with preferred lifetime 0 would do.
        subprocess.run(["ip", "-n", env.netns, "addr", "add", "2001:db8:0:2::1/64", "dev",
                        env.host.mux.gateway], check=True)  # fmt: skip
        env.reload_radvd()
        new = stack.wait_dig(f"{name}.{PUBLIC}", lambda a: "2001:db8:0:2:" in a, timeout=10)
        print(f"renumbered prefix published {new:.3f}s after radvd's reload")
        subprocess.run(["ip", "-n", name, "addr", "change", f"{g}/64", "dev", "eth0",
                        "preferred_lft", "0", "valid_lft", "600"], check=True)  # fmt: skip
        stack.wait_dig(f"{name}.{PUBLIC}", lambda a: g not in a.split() and a != "")
        # kill -9 of the workload: the lifeline's last holder is gone.
        t1 = time.monotonic()
        p.send_signal(signal.SIGKILL)
        p.wait()
        # Generous timeouts bound a hang only: the latency is benched (bench/phonebook.py).
        stack.wait_dig(f"{name}.{PUBLIC}", lambda a: a == "", timeout=15)
        stack.wait_dig(f"{name}.internal", lambda a: a == "", timeout=15)
        print(f"kill -9 -> records gone in {time.monotonic() - t1:.3f}s")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        env.netmux("down", name, check=False)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_up_without_phonebookd_still_works(mux_radvd: MuxEnv, tmp_path: object) -> None:
    env = mux_radvd
    name = env.name("n")
    penv = env.env()
    penv["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={tmp_path}/nobus"
    r = subprocess.run(
        env.argv("up", name, "--", "true"), env=penv, capture_output=True, text=True, timeout=30
    )
    try:
        assert r.returncode == 0, r.stderr
        assert "not published in DNS" in r.stderr
    finally:
        env.netmux("down", name, check=False)


def test_down_unpublishes_even_while_the_lifeline_is_held(
    mux_radvd: MuxEnv, stack: Stack, via: str
) -> None:
    env = mux_radvd
    name = env.name("d")
    penv = env.env()
    penv["DBUS_SYSTEM_BUS_ADDRESS"] = stack.bus
    p = subprocess.Popen(env.argv("up", name, "--", "sleep", "120"), env=penv)
    try:
        # up is done once it has exec'd CMD (it returns only once every record is served)
        wait_for(lambda: _comm(p.pid) == "sleep" or p.poll() is not None, timeout=20)
        assert stack.dig(f"{name}.internal").startswith("fd64:cafe:")
        r = subprocess.run(env.argv("down", name), env=penv, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert p.wait(timeout=10) < 0  # down stopped the workload too, after unpublishing
        stack.wait_dig(f"{name}.internal", lambda a: a == "", timeout=3)
        assert f"removed {name}: unpublished" in stack.log()
    finally:
        p.kill()
        p.wait()
        env.netmux("down", name, check=False)
