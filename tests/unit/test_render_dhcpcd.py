"""dhcpcd.conf rendering (pure); dhcpcd itself runs in tests/netns/test_uplink.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from netmux.config import parse_host
from netmux.errors import UsageError
from netmux.render import dhcpcd

pytestmark = pytest.mark.unit


def test_pd_onto_gateway_with_namespace_essentials() -> None:
    text = dhcpcd.render(parse_host(""), ["enp2s0"], "/run/netmux/dhcpcd-hook")
    lines = [line.strip() for line in text.splitlines()]
    for want in ("nodev", "duid ll", "script /run/netmux/dhcpcd-hook",
                 "allowinterfaces enp2s0 gw0", "noipv6rs", "ipv6ra_noautoconf"):  # fmt: skip
        assert want in lines, want
    gw = text.index("interface gw0")
    up = text.index("interface enp2s0")
    assert "noipv4" in text[gw:up] and "noipv6rs" in text[gw:up]
    assert "ipv6rs" in text[up:] and "ia_pd 1 gw0/0/64/0" in text[up:]
    # NAT64 is on by default: DHCPv4 on the uplink, so not ipv6only.
    assert "ipv6only" not in lines


def test_dhcpv4_follows_nat64_unless_forced() -> None:
    off = parse_host("[nat64]\nenabled = false\n")
    assert "ipv6only" in dhcpcd.render(off, ["eth0"], "/bin/true").splitlines()
    forced = parse_host('[nat64]\nenabled = false\n[uplink]\ndhcpv4 = "on"\n')
    assert "ipv6only" not in dhcpcd.render(forced, ["eth0"], "/bin/true").splitlines()
    never = parse_host('[uplink]\ndhcpv4 = "off"\n')
    assert "ipv6only" in dhcpcd.render(never, ["eth0"], "/bin/true").splitlines()


def test_iaid_sla_and_gateway_from_config_and_every_uplink() -> None:
    cfg = parse_host('[mux]\ngateway = "gwx"\n[uplink]\npd_iaid = 7\npd_sla_id = 3\n')
    text = dhcpcd.render(cfg, ["enp1s0", "enp2s0"], "/bin/true")
    assert text.count("ia_pd 7 gwx/3/64/0") == 2
    assert "allowinterfaces enp1s0 enp2s0 gwx" in text


def test_no_uplink_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match=r"uplink.*--uplink"):
        dhcpcd.render(parse_host(""), [], "/bin/true")


def test_hook_execs_renumber_with_quoted_paths() -> None:
    hook = dhcpcd.render_hook(
        ["/usr/bin/python3", "-m", "netmux.renumber"], "/etc/net mux/netmux.toml", "/run/netmux"
    )
    assert hook.startswith("#!/bin/sh\n")
    assert "exec /usr/bin/python3 -m netmux.renumber --state /run/netmux" in hook
    assert "--config '/etc/net mux/netmux.toml'" in hook


def test_hook_runs_the_netmux_that_rendered_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A console script or launcher named netmux is re-run (it knows where the package is)."""
    prog = tmp_path / "bin" / "netmux"
    prog.parent.mkdir()
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(prog), "render", "dhcpcd"])
    assert dhcpcd.renumber_command() == [str(prog), "renumber-hook"]
    monkeypatch.setattr(sys, "argv", ["/x/netmux/cli.py"])
    assert dhcpcd.renumber_command() == [sys.executable, "-m", "netmux.renumber"]


def test_renumber_hook_subcommand_reaches_renumber() -> None:
    r = subprocess.run([sys.executable, "-m", "netmux.cli", "renumber-hook", "--help"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "--state" in r.stdout, r.stderr


def test_cli_writes_config_and_executable_hook(tmp_path: Path) -> None:
    """`netmux render dhcpcd --output F` (netmux-dhcpcd.service's ExecStartPre)."""
    cfg = tmp_path / "netmux.toml"
    cfg.write_text(f'[mux]\nnetns = "nonexistent-ns"\n[paths]\nrun_dir = "{tmp_path}/run"\n')
    out = tmp_path / "unit" / "dhcpcd.conf"
    r = subprocess.run(
        [sys.executable, "-m", "netmux.cli", "--config", str(cfg), "render", "dhcpcd",
         "--uplink", "enp9s0", "--output", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    hook = out.parent / dhcpcd.HOOK_NAME
    assert f"script {hook}\n" in out.read_text() and "interface enp9s0\n" in out.read_text()
    assert os.access(hook, os.X_OK)
    assert f"--config {cfg}" in hook.read_text()
    r = subprocess.run(["sh", "-n", str(hook)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # no uplink in mux and only patterns: a one-line error naming the way out
    r = subprocess.run(
        [sys.executable, "-m", "netmux.cli", "--config", str(cfg), "render", "dhcpcd"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "--uplink" in r.stderr and len(r.stderr.splitlines()) == 1


def _run_hook(hook: Path, **env: str) -> str:
    r = subprocess.run(["sh", str(hook)], env={"PATH": "/usr/bin:/bin", **env},
                       capture_output=True, text=True, check=True)  # fmt: skip
    return r.stdout


def test_hook_wakes_renumber_on_short_renewals_only(tmp_path: Path) -> None:
    """A renewal within the caps must restart radvd's countdown; one above both caps
    changes nothing radvd says and stops in the shell (the variables dhcpcd 9.4.1 sets)."""
    hook = tmp_path / "hook"
    hook.write_text(
        dhcpcd.render_hook(["echo", "woke"], None, str(tmp_path / "st"), limits=(2700, 5400))
    )
    lease = {"new_dhcp6_ia_pd1_prefix1": "2001:db8:0:1::", "new_dhcp6_ia_pd1_prefix1_length": "64"}
    long = {
        **lease,
        "new_dhcp6_ia_pd1_prefix1_pltime": "7200",
        "new_dhcp6_ia_pd1_prefix1_vltime": "14400",
    }
    short = {
        **lease,
        "new_dhcp6_ia_pd1_prefix1_pltime": "40",
        "new_dhcp6_ia_pd1_prefix1_vltime": "14400",
    }
    assert _run_hook(hook, reason="RENEW6", **long).startswith("woke")  # first: capped now
    assert _run_hook(hook, reason="RENEW6", **long) == ""
    assert _run_hook(hook, reason="RENEW6", **short).startswith("woke")
    assert _run_hook(hook, reason="RENEW6", **short).startswith("woke")  # every time
    assert _run_hook(hook, reason="REBIND6", **long).startswith("woke")
    moved = {**long, "new_dhcp6_ia_pd1_prefix1": "2001:db8:0:2::"}
    assert _run_hook(hook, reason="RENEW6", **moved).startswith("woke")
    assert _run_hook(hook, reason="RENEW6").startswith("woke")  # no lease variables: wake
    assert _run_hook(hook, reason="NOCARRIER") == ""
