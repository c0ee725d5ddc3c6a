"""mux up/down (idempotent, real namespaces), the muxfix fixture, NIC adoption."""

from __future__ import annotations

import errno
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux import config, links, mux
from netmux.errors import StateError
from tests import muxfix
from tests.conftest import RUN, wait_for
from tests.muxfix import MuxEnv

mux_radvd = muxfix.mux_radvd

pytestmark = pytest.mark.netns


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def _sysctl(ns: str, key: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-n", key], capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip


def test_mux_up_is_idempotent_and_down_removes_all(
    tmp_config: Callable[..., Path], uname: Callable[[str], str]
) -> None:
    root_link = uname("r")
    path = tmp_config()
    path.write_text(path.read_text().replace("[mux]\n", f'[mux]\nroot_link = "{root_link}"\n'))
    host = config.load_host(path)
    ns = host.mux.netns
    mux.up(host)
    mux.up(host)  # idempotent: no error, same result
    links_in_mux = _ip("-n", ns, "-br", "link")
    assert "host0" in links_in_mux and "gw0@host0" in links_in_mux
    assert "fd64:cafe::1/64" in _ip("-n", ns, "-6", "addr", "show", "gw0")
    assert _sysctl(ns, "net.ipv6.conf.all.forwarding") == "1"
    assert _sysctl(ns, "net.ipv6.conf.default.forwarding") == "1"
    assert _sysctl(ns, "net.ipv6.conf.gw0.forwarding") == "1"
    assert _sysctl(ns, "net.ipv6.neigh.gw0.retrans_time_ms") == "100"
    # the root namespace's macvlan exists here, on host0, and is up
    assert root_link in _ip("-br", "link", "show", root_link)
    assert mux.down(host)
    assert not mux.down(host)  # idempotent
    assert ns not in _ip("netns", "list")
    assert root_link not in _ip("-br", "link")


def test_fixture_serves_router_adverts(mux_radvd: MuxEnv) -> None:
    assert mux_radvd.radvd is not None and mux_radvd.radvd.poll() is None
    gw = _ip("-n", mux_radvd.netns, "-6", "addr", "show", "gw0")
    assert "2001:db8:0:1::1/64" in gw


def _peer(name: str) -> str:
    """The root-side end of a test uplink: outside the uplink pattern RUN + "u*"."""
    return name.replace(f"{RUN}u", f"{RUN}v", 1)


def _veth(name: str) -> None:
    subprocess.run(
        ["ip", "link", "add", name, "type", "veth", "peer", "name", _peer(name)], check=True
    )


def _del(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], check=False, stderr=subprocess.DEVNULL)


def test_nic_adopt_cli_skips_non_matching_and_missing(mux_radvd: MuxEnv) -> None:
    u = f"{RUN}u{int(time.time() * 1000) % 0xFFFF:x}"
    _veth(u)
    try:
        r = mux_radvd.netmux("nic", "adopt", u)
        assert "adopted" in r.stderr
        assert u in _ip("-n", mux_radvd.netns, "-br", "link")
        r = mux_radvd.netmux("nic", "adopt", u)  # again (udev rule + watcher): harmless
        assert r.returncode == 0 and "already in mux" in r.stderr
        # missing NIC, NIC that matches no pattern: logged, exit 0, nothing changes
        r = mux_radvd.netmux("nic", "adopt", f"{RUN}ugone")
        assert r.returncode == 0 and "vanished" in r.stderr
        r = mux_radvd.netmux("nic", "adopt", _peer(u))
        assert r.returncode == 0 and "matches no uplink pattern" in r.stderr
        assert _peer(u) in _ip("-br", "link")
    finally:
        _del(_peer(u))


def test_watcher_adopts_hotplugged_nic_and_skips_vanished(mux_radvd: MuxEnv) -> None:
    host = mux_radvd.host
    base = f"{RUN}u{int(time.time() * 1000) % 0xFFF:x}"
    early, gone, late = base + "a", base + "b", base + "c"
    _veth(early)  # present before the watcher starts: found by enumeration
    stop = threading.Event()
    ready = threading.Event()
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(mux.watch_nics(host, stop, ready.set, poll=0.05))
    )
    t.start()
    try:
        assert ready.wait(10)
        assert early in _ip("-n", host.mux.netns, "-br", "link")
        # a NIC that disappears right after it appeared is skipped, the watcher goes on
        _veth(gone)
        _del(gone)
        _veth(late)
        wait_for(lambda: late in _ip("-n", host.mux.netns, "-br", "link"), timeout=5)
        # a NIC that only matches once renamed (udev naming it after the kernel did)
        renamed, tmpname = base + "r", f"{RUN}t{base[-3:]}"
        subprocess.run(["ip", "link", "add", tmpname, "type", "veth", "peer", "name",
                        _peer(renamed)], check=True)  # fmt: skip
        subprocess.run(["ip", "link", "set", tmpname, "name", renamed], check=True)
        wait_for(lambda: renamed in _ip("-n", host.mux.netns, "-br", "link"), timeout=5)
    finally:
        stop.set()
        t.join(5)
        for n in (early, gone, late, base + "r"):
            _del(_peer(n))
    assert not t.is_alive()
    assert result and result[0] >= 3


def test_mux_down_keeps_nothing_in_root(mux_radvd: MuxEnv) -> None:
    with links.iproute(mux_radvd.netns) as ipr:
        assert links.link_index(ipr, "gw0") is not None


def test_mux_up_watch_notifies_ready_adopts_and_stops_on_sigterm(
    tmp_config: Callable[..., Path], tmp_path: Path
) -> None:
    """The netmux-mux.service path: `netmux mux up --watch` under Type=notify."""
    import os
    import signal
    import socket
    import sys

    path = tmp_config()
    host = config.load_host(path)
    sock_path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    s.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path))
    u = f"{RUN}u{int(time.time() * 1000) % 0xFFF:x}w"
    p = subprocess.Popen(
        [sys.executable, "-m", "netmux.cli", "--config", str(path), "mux", "up", "--watch"],
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        msg = s.recv(4096).decode()
        assert "READY=1" in msg.splitlines()
        assert links.netns_exists(host.mux.netns)
        _veth(u)
        wait_for(lambda: u in _ip("-n", host.mux.netns, "-br", "link"), timeout=5)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=5) == 0
    finally:
        s.close()
        if p.poll() is None:
            p.kill()
            p.wait()
        _del(_peer(u))
        mux.down(host)


@pytest.mark.parametrize("kind", ["veth", "bridge"])
def test_parent_kinds_carry_workloads(tmp_path: Path, kind: str) -> None:
    """No dummy here: both fallbacks must give macvlans carrier, RAs and SLAAC."""
    with muxfix.running_mux(tmp_path / kind, mux_extra=f'parent_kind = "{kind}"') as env:
        assert f"{kind}" in _ip("-n", env.netns, "-d", "link", "show", "host0")
        n = env.name("k")
        env.netmux("up", n)
        assert env.global_address(n).startswith("2001:db8:0:1:")
        env.netmux("down", n)


def test_dummy_parent_fails_clearly_where_the_kernel_lacks_it(
    tmp_config: Callable[..., Path],
) -> None:
    path = tmp_config()
    path.write_text(path.read_text().replace("[mux]\n", '[mux]\nparent_kind = "dummy"\n'))
    host = config.load_host(path)
    probe = subprocess.run(
        ["ip", "link", "add", f"{RUN}dprobe", "type", "dummy"], capture_output=True, text=True
    )
    if probe.returncode != 0:  # the real kernel refuses: all of mux.up, rolled back
        try:
            with pytest.raises(StateError, match="none of dummy is available"):
                mux.up(host)
            assert not links.netns_exists(host.mux.netns)  # rolled back
        finally:
            mux.down(host)
        return
    _del(f"{RUN}dprobe")
    # This kernel has dummy: a real netlink socket that answers a dummy request the way a
    # kernel without it does (EOPNOTSUPP) stands in for that kernel in _ensure_parent.
    from pyroute2.netlink.exceptions import NetlinkError

    ns = f"{RUN}nodummy"
    links.create_netns(ns)
    try:
        with links.iproute(ns) as ipr:
            real_link = ipr.link

            def link(cmd: str, **kw: object) -> object:
                if cmd == "add" and kw.get("kind") == "dummy":
                    raise NetlinkError(errno.EOPNOTSUPP, "Operation not supported")
                return real_link(cmd, **kw)

            ipr.link = link
            with pytest.raises(StateError, match="none of dummy is available"):
                mux._ensure_parent(ipr, host.mux)
            assert links.link_info(ipr, host.mux.parent) is None
    finally:
        links.remove_netns(ns)


def test_mux_down_with_watcher_running_does_not_readopt(mux_radvd: MuxEnv) -> None:
    """systemd runs ExecStop=`netmux mux down` while `mux up --watch` still runs: the
    uplinks handed back to the root namespace must stay there."""
    host = mux_radvd.host
    u = f"{RUN}u{int(time.time() * 1000) % 0xFFF:x}d"
    _veth(u)
    stop = threading.Event()
    ready = threading.Event()
    handled: list[tuple[str, str]] = []
    t = threading.Thread(
        target=lambda: mux.watch_nics(
            host, stop, ready.set, poll=0.02, on_handled=lambda *e: handled.append(e)
        )
    )
    t.start()
    try:
        assert ready.wait(10)
        assert u in _ip("-n", host.mux.netns, "-br", "link")
        if mux_radvd.radvd is not None:  # stop radvd first, as the units do
            muxfix.stop(mux_radvd.radvd)
            mux_radvd.radvd = None
        handled.clear()
        mux.down(host)
        # The watcher has acted on u's return to this namespace: had it (wrongly) taken
        # it back, that would be done by now.
        wait_for(lambda: ("add", u) in handled or ("move", u) in handled, timeout=10)
        assert u in _ip("-br", "link")
    finally:
        stop.set()
        t.join(5)
        _del(_peer(u))
