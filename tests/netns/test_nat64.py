"""NAT64 pieces accepted by the real kernel and daemons, in namespaces of their own:
the rendered nft ruleset checks and loads (the original design's `type filter` chain does not),
and tayga runs with the rendered config (the probed pool: class E or the fallback)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netmux import daemons
from netmux.config import parse_host
from netmux.lab import supervise
from netmux.render import nat, tayga
from tests.conftest import wait_for

pytestmark = pytest.mark.netns

SEED_RULESET = """table inet nat64 {
  chain postrouting {
    type filter hook postrouting priority srcnat
    ip saddr 240.0.0.0/4 masquerade
  }
}
"""


def nft(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", *args],
                          capture_output=True, text=True)  # fmt: skip


@pytest.mark.requires("nft")
def test_nat_ruleset_checks_loads_and_reloads(netns: Callable[[str], str], tmp_path: Path) -> None:
    ns = netns("nat")
    rules = tmp_path / "nat.nft"
    rules.write_text(nat.render(parse_host(""), daemons.tayga()))
    r = nft(ns, "-c", "-f", str(rules))
    assert r.returncode == 0, r.stderr
    for _ in range(2):  # a reload replaces the table (its first lines empty it)
        r = nft(ns, "-f", str(rules))
        assert r.returncode == 0, r.stderr
    listing = nft(ns, "list", "table", "ip", nat.TABLE).stdout
    assert "type nat hook postrouting priority srcnat" in listing
    assert listing.count("masquerade") == 1


@pytest.mark.requires("nft")
def test_the_seeds_filter_chain_masquerade_is_rejected_by_the_kernel(
    netns: Callable[[str], str], tmp_path: Path
) -> None:
    """Why render/nat.py uses a nat chain: the original ruleset fails to load."""
    ns = netns("seed")
    rules = tmp_path / "seed.nft"
    rules.write_text(SEED_RULESET)
    assert nft(ns, "-f", str(rules)).returncode != 0


@pytest.mark.requires("tayga")
def test_tayga_runs_with_the_rendered_config(netns: Callable[[str], str], tmp_path: Path) -> None:
    ns = netns("t64")
    host = parse_host('[nat64]\nprefix = "2001:db8:64::/96"\n')
    feats = daemons.tayga()
    plan = tayga.plan(host, feats)
    assert plan.fallback == (not feats.class_e_pool)
    conf = tmp_path / "tayga.conf"
    conf.write_text(tayga.render(host, feats, tmp_path / "data"))
    (tmp_path / "data").mkdir()
    r = subprocess.run(["ip", "netns", "exec", ns, "tayga", "--mktun", "-c", str(conf)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    d = supervise.start("tayga", ["tayga", "--nodetach", "-c", str(conf)], ns, tmp_path)
    try:
        # tayga opened its TUN (it is running, not starting) or exited: either proves it.
        def attached_or_gone() -> bool:
            if not d.alive:
                return True
            fds = Path(f"/proc/{d.pid}/fd")
            with contextlib.suppress(OSError):
                return any(os.readlink(f) == "/dev/net/tun" for f in fds.iterdir())
            return False

        wait_for(attached_or_gone, timeout=10)
        assert d.alive, Path(d.log).read_text()
        link = subprocess.run(["ip", "-n", ns, "link", "show", plan.tun],
                              capture_output=True, text=True)  # fmt: skip
        assert link.returncode == 0, link.stderr
    finally:
        supervise.stop("tayga", tmp_path)


@pytest.mark.requires("tayga")
def test_tayga_probe_matches_what_tayga_accepts(tmp_path: Path) -> None:
    """The probe's answer is what tayga itself says about the original design's class E pool."""
    conf = tmp_path / "t.conf"
    feats = daemons.TaygaFeatures(class_e_pool=True)
    conf.write_text(tayga.render(parse_host(""), feats, tmp_path))
    r = subprocess.run(["unshare", "--net", "tayga", "--mktun", "-c", str(conf)],
                       capture_output=True, text=True)  # fmt: skip
    assert (r.returncode == 0) == daemons.tayga().class_e_pool, r.stdout + r.stderr


@pytest.mark.requires("tayga")
def test_unit_entry_points_set_up_and_tear_down_nat64(
    netns: Callable[[str], str], tmp_path: Path
) -> None:
    """What netmux-tayga.service runs: `netmux render tayga --output F`, then
    `netmux nat64 setup F`; `netmux nat64 teardown` undoes it."""
    import sys

    ns = netns("mx")
    cfg = tmp_path / "netmux.toml"
    cfg.write_text(
        f'[mux]\nnetns = "{ns}"\n[nat64]\nprefix = "2001:db8:64::/96"\n'
        f'[paths]\nstate_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\n'
    )
    conf = tmp_path / "run" / "tayga.conf"
    py = [sys.executable, "-m"]
    r = subprocess.run([*py, "netmux.cli", "--config", str(cfg), "render", "tayga", "--output",
                        str(conf)], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "tun-device nat64" in conf.read_text(), r.stderr
    for _ in range(2):  # idempotent
        r = subprocess.run([*py, "netmux.cli", "--config", str(cfg), "nat64", "setup",
                            str(conf)], capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
    routes = subprocess.run(["ip", "-n", ns, "route", "show", "dev", "nat64"],
                            capture_output=True, text=True).stdout  # fmt: skip
    assert tayga.plan(parse_host(""), daemons.tayga()).pool.with_prefixlen.split("/")[0] in routes
    assert nat.TABLE in nft(ns, "list", "tables").stdout
    r = subprocess.run([*py, "netmux.cli", "--config", str(cfg), "nat64", "teardown"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert nat.TABLE not in nft(ns, "list", "tables").stdout
    gone = subprocess.run(["ip", "-n", ns, "link", "show", "nat64"], capture_output=True)
    assert gone.returncode != 0


STUB = """#!/bin/sh
# A stand-in for a program this kernel cannot use (no jool module can load here):
# records its name, network namespace and arguments, and succeeds.
echo "$(basename "$0") $(readlink /proc/self/ns/net) $*" >> "{log}"
"""


def test_jool_entry_points_run_in_mux_with_the_rendered_file(
    netns: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What netmux-jool.service runs, on a kernel that cannot have Jool: `jool` and
    `modprobe` are stand-ins that record where they ran. `nat64 jool-up FILE` writes the
    rendered JSON, loads the module (in the root namespace), turns on IPv4 forwarding in
    mux and hands the file to `jool file handle` inside mux; jool-down removes the
    instance there. The engine choice still says tayga: jool-tools alone is not Jool."""
    import json
    import os

    from netmux import cli, nat64, nsutil
    from netmux.render import jool

    ns = netns("jm")
    log = tmp_path / "calls.log"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for prog in ("jool", "modprobe"):
        (bindir / prog).write_text(STUB.format(log=log))
        (bindir / prog).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    cfg = tmp_path / "netmux.toml"
    cfg.write_text(
        f'[mux]\nnetns = "{ns}"\n[nat64]\nprefix = "2001:db8:64::/96"\n'
        f'[paths]\nstate_dir = "{tmp_path}/state"\nrun_dir = "{tmp_path}/run"\n'
    )
    conf = tmp_path / "run" / "jool.json"
    assert cli.main(["--config", str(cfg), "nat64", "jool-up", str(conf)]) == 0
    doc = json.loads(conf.read_text())
    assert doc["instance"] == jool.INSTANCE and doc["global"]["pool6"] == "2001:db8:64::/96"
    assert nsutil.read_sysctl(ns, "net.ipv4.conf.all.forwarding") == "1"
    assert cli.main(["--config", str(cfg), "nat64", "jool-down"]) == 0
    mux_ns = f"net:[{os.stat(nsutil.netns_path(ns)).st_ino}]"
    root_ns = os.readlink("/proc/self/ns/net")
    calls = [line.split(" ", 2) for line in log.read_text().splitlines()]
    assert calls == [
        ["modprobe", root_ns, "jool"],
        ["jool", mux_ns, f"file handle {conf}"],
        ["jool", mux_ns, f"instance remove {jool.INSTANCE}"],
    ]
    facts = nat64.probe()
    assert facts.jool_binary
    if not facts.jool_loaded and not (facts.modules_supported and facts.jool_installed):
        assert nat64.choose(facts).name != "jool"
