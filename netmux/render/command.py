"""`netmux render WHAT`: the renderers of this package (pure functions of the host config
and the daemon's features, which netmux.daemons probes) with their inputs from the
system. `cmd_render` is the thin edge that probes, asks
mux for the uplink names where a renderer needs them, and prints or writes the result.
systemd units call `netmux render WHAT --output FILE` in ExecStartPre.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

from ..config import HostConfig
from ..errors import UsageError
from ..files import write_atomic

KINDS = ("radvd", "dhcpcd", "tayga", "jool", "unbound", "nft")
# Where netmux-radvd.service keeps radvd's config and pidfile: the dhcpcd hook re-renders
# and SIGHUPs it when the delegated prefix changes (renumber.py).
RADVD_CONF = Path("/run/netmux-radvd/radvd.conf")
RADVD_PID = Path("/run/netmux-radvd/radvd.pid")


def uplinks_in_mux(cfg: HostConfig) -> list[str]:
    """The uplink names dhcpcd must name: links in mux matching mux.uplinks, else the
    patterns that are plain names (no wildcard)."""
    found: list[str] = []
    if Path("/run/netns", cfg.mux.netns).exists():
        r = subprocess.run(
            ["ip", "-n", cfg.mux.netns, "-j", "link", "show"],
            capture_output=True,
            text=True,
            check=False,
        )
        try:
            names = [rec["ifname"] for rec in json.loads(r.stdout or "[]")]
        except (ValueError, KeyError, TypeError):
            names = []
        found = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in cfg.mux.uplinks)]
    if not found:
        found = [p for p in cfg.mux.uplinks if not any(c in p for c in "*?[")]
    return found


def render_text(
    cfg: HostConfig, what: str, uplinks: list[str] | None = None, output: Path | None = None
) -> str:
    """The text of one daemon's config (probing the installed daemon's features)."""
    from .. import daemons, renumber
    from . import dhcpcd, nat, radvd, tayga, unbound

    if what == "radvd":
        deprecated = renumber.deprecated_prefixes(cfg.paths.run_dir)
        leases = renumber.current_leases(cfg.mux.gateway, cfg.mux.netns)
        return radvd.render(cfg, daemons.radvd(), deprecated, leases)
    if what == "dhcpcd":
        hook = cfg.uplink.hook or str(hook_path(cfg, output))
        return dhcpcd.render(cfg, uplinks if uplinks else uplinks_in_mux(cfg), hook)
    if what == "tayga":
        return tayga.render(cfg, daemons.tayga())
    if what == "jool":
        from . import jool

        return jool.render(cfg)
    if what == "unbound":
        return unbound.render(cfg, daemons.unbound())
    if what == "nft":
        return nat.render(cfg, daemons.tayga())
    raise UsageError(f"render: {what!r} is not allowed; one of {', '.join(KINDS)}")


def hook_path(cfg: HostConfig, output: Path | None) -> Path:
    """netmux's dhcpcd hook lives next to the rendered dhcpcd.conf (or in the run dir)."""
    from .dhcpcd import HOOK_NAME

    return (output.parent if output else cfg.paths.run_dir) / HOOK_NAME


def cmd_render(args: argparse.Namespace, cfg: HostConfig) -> int:
    from . import dhcpcd

    output = Path(args.output) if args.output else None
    if args.what == "router-rules":  # rules for the upstream router (pure)
        from . import router_rules

        text = router_rules.text_from_args(args, cfg)
    else:
        text = render_text(cfg, args.what, args.uplink, output)
    if output is None:
        sys.stdout.write(text)
        return 0
    write_atomic(output, text)
    if args.what == "dhcpcd" and not cfg.uplink.hook:
        cfg_path = cfg.source if Path(cfg.source).is_file() else None
        hook = dhcpcd.render_hook(
            dhcpcd.renumber_command(),
            cfg_path,
            str(cfg.paths.run_dir),
            str(RADVD_CONF),
            str(RADVD_PID),
            (cfg.uplink.ra_preferred_limit, cfg.uplink.ra_valid_limit),
        )
        write_atomic(hook_path(cfg, output), hook, 0o755)
    return 0
