"""Which NAT64 engine runs in mux, Jool (kernel) or tayga (userspace), and Jool's edges.

Jool translates in the kernel and needs its module (jool-dkms, built for the running
kernel, loadable) and jool-tools' `jool`; tayga is a userspace daemon on a TUN and runs on
any kernel with TUN support. `choose` is pure: given what the host offers (EngineFacts,
from `probe`) and `nat64.engine` ("auto" prefers Jool), it returns the engine and the
reason, which `netmux doctor` and `netmux nat64 engine` print. The units ask the same
question (`netmux nat64 engine --is tayga|jool` in ExecCondition=), so exactly one of
netmux-tayga.service and netmux-jool.service runs. Around tayga in mux, `tayga_setup`
makes its TUN, routes and NAT ruleset and `teardown` removes them (`netmux nat64 setup`,
`teardown`: netmux-tayga.service; the lab's supervised tayga too, lab/uplink.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import daemons, journal, links, nsutil
from .config import HostConfig
from .errors import StateError, UsageError
from .render import jool as jool_render
from .render import nat as nat_render
from .render import tayga as tayga_render

EngineName = Literal["jool", "tayga", "none"]


@dataclass(frozen=True)
class EngineFacts:
    """What the host offers NAT64; each field is something `probe` looked at."""

    jool_binary: bool = False  # `jool` (jool-tools) is on PATH
    jool_loaded: bool = False  # /sys/module/jool exists
    jool_installed: bool = False  # a jool.ko* for the running kernel under /lib/modules
    modules_supported: bool = True  # /proc/modules exists (kernel built with modules)
    modules_disabled: bool = False  # kernel.modules_disabled = 1
    tayga_binary: bool = False
    kernel: str = ""


@dataclass(frozen=True)
class Engine:
    name: EngineName
    reason: str


def _why_no_jool_module(f: EngineFacts) -> str:
    """'' when the jool module is loaded or can be loaded, else why not."""
    if f.jool_loaded:
        return ""
    if not f.modules_supported:
        return f"the kernel ({f.kernel or 'this one'}) cannot load modules (no /proc/modules)"
    if f.modules_disabled:
        return "module loading is disabled (kernel.modules_disabled = 1)"
    if not f.jool_installed:
        return (
            f"no jool module for kernel {f.kernel or '(running)'} "
            "(apt install jool-dkms linux-headers-$(uname -r))"
        )
    return ""


def choose(f: EngineFacts, preference: str = "auto") -> Engine:
    """The engine for these facts and `nat64.engine`; the reason names what decided. Pure."""
    module = _why_no_jool_module(f)
    jool_ok = not module and f.jool_binary
    why_not_jool = module or ("" if f.jool_binary else "jool-tools is not installed (no `jool`)")
    how = "loaded" if f.jool_loaded else "installed and loadable"
    if preference == "jool":
        if jool_ok:
            return Engine("jool", f"nat64.engine = jool; the jool module is {how}")
        return Engine("none", f"nat64.engine = jool, but {why_not_jool}")
    if preference == "auto" and jool_ok:
        return Engine("jool", f"the jool module is {how} and jool-tools is installed")
    if f.tayga_binary:
        if preference == "tayga":
            return Engine("tayga", "nat64.engine = tayga")
        return Engine("tayga", f"Jool is not usable: {why_not_jool}")
    if preference == "tayga":
        return Engine("none", "nat64.engine = tayga, but tayga is not installed")
    return Engine("none", f"neither engine is usable: {why_not_jool}; tayga is not installed")


# --- the thin edges -------------------------------------------------------------------------


def probe() -> EngineFacts:
    release = platform.release()
    moddir = Path("/lib/modules", release)
    installed = moddir.is_dir() and any(moddir.rglob("jool.ko*"))
    try:
        disabled = Path("/proc/sys/kernel/modules_disabled").read_text().strip() == "1"
    except OSError:
        disabled = False
    return EngineFacts(
        jool_binary=shutil.which("jool") is not None,
        jool_loaded=Path("/sys/module/jool").exists(),
        jool_installed=installed,
        modules_supported=Path("/proc/modules").exists(),
        modules_disabled=disabled,
        tayga_binary=shutil.which("tayga") is not None,
        kernel=release,
    )


def engine(host: HostConfig) -> Engine:
    if not host.nat64.enabled:
        return Engine("none", "NAT64 is off ([nat64] enabled = false)")
    return choose(probe(), host.nat64.engine)


def _run(argv: list[str], netns: str | None = None, stdin: str | None = None) -> None:
    full = ["ip", "netns", "exec", netns, *argv] if netns else argv
    r = subprocess.run(full, capture_output=True, text=True, input=stdin)
    if r.returncode:
        raise StateError(f"nat64: `{' '.join(argv)}` failed: {(r.stderr or r.stdout).strip()}")


def jool_up(host: HostConfig, conf: Path) -> None:
    """Jool's instance in mux from the rendered JSON (idempotent: `file handle` updates an
    existing instance atomically), after loading the module and turning IPv4 forwarding on."""
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(jool_render.render(host))
    if not Path("/sys/module/jool").exists():
        _run(["modprobe", "jool"])
    ns = host.mux.netns
    nsutil.write_sysctls(ns, [("net.ipv4.conf.all.forwarding", "1")])
    _run(["jool", "file", "handle", str(conf)], ns)
    journal.info(f"nat64: Jool instance {jool_render.INSTANCE} in {ns}", netns=ns)


def jool_down(host: HostConfig) -> None:
    """Remove netmux's Jool instance from mux (nothing to do without one)."""
    ns = host.mux.netns
    if shutil.which("jool") and nsutil.netns_path(ns).exists():
        subprocess.run(["ip", "netns", "exec", ns, "jool", "instance", "remove",
                        jool_render.INSTANCE], capture_output=True, check=False)  # fmt: skip


def tayga_setup(host: HostConfig, conf: Path) -> None:
    """What tayga needs around it in mux (idempotent): its TUN (`tayga --mktun` with the
    rendered config), link up, routes for the pool, the prefix and tayga's own IPv6
    address, IPv4 forwarding, and the NAT ruleset. netmux-tayga.service runs this as
    `netmux nat64 setup CONF` in ExecStartPre=."""
    ns = host.mux.netns
    feats = daemons.tayga()
    p = tayga_render.plan(host, feats)
    with links.iproute(ns) as ipr:
        existing = links.link_index(ipr, p.tun) is not None
    if not existing:
        _run(["tayga", "--mktun", "-c", str(conf)], ns)
    with links.iproute(ns) as ipr:
        links.set_up(ipr, p.tun)
        for dst in (str(p.pool), str(host.nat64.prefix), f"{p.ipv6_addr}/128"):
            links.replace_route(ipr, dst, p.tun)
    nsutil.write_sysctls(ns, [("net.ipv4.conf.all.forwarding", "1")])
    _run(["nft", "-f", "-"], ns, stdin=nat_render.render(host, feats))


def teardown(host: HostConfig) -> None:
    """Remove what NAT64 put in mux besides the daemon (idempotent): Jool's instance,
    tayga's TUN, the NAT ruleset. netmux-tayga.service runs this as `netmux nat64
    teardown` in ExecStopPost=; the lab after stopping its tayga (lab/uplink.py)."""
    jool_down(host)
    ns = host.mux.netns
    if not nsutil.netns_path(ns).exists():
        return
    p = tayga_render.plan(host, daemons.tayga())
    with contextlib.suppress(OSError), links.iproute(ns) as ipr:
        links.delete_link(ipr, p.tun)
    subprocess.run(
        ["nsenter", f"--net={nsutil.netns_path(ns)}", "nft", "delete", "table", "ip",
         nat_render.TABLE],
        capture_output=True,
        check=False,
    )  # fmt: skip


def cmd_engine(args: argparse.Namespace, host: HostConfig) -> int:
    """`netmux nat64 engine [--is NAME]`: print the choice; with --is, exit 0 only when it
    is NAME (1 otherwise: ExecCondition= then skips the unit instead of failing it)."""
    e = engine(host)
    if args.is_:
        return 0 if e.name == args.is_ else 1
    print(f"{e.name}: {e.reason}")
    return 0 if e.name != "none" or not host.nat64.enabled else 1


def default_conf(host: HostConfig) -> Path:
    return Path(os.environ.get("RUNTIME_DIRECTORY", str(host.paths.run_dir))) / "jool.json"


def cmd_nat64(args: argparse.Namespace, host: HostConfig) -> int:
    """`netmux nat64 setup CONF` (ExecStartPre=) / `netmux nat64 teardown` (ExecStopPost=);
    `engine`, `jool-up`, `jool-down`."""
    if args.action == "engine":
        return cmd_engine(args, host)
    if args.action == "jool-up":
        jool_up(host, Path(args.conf) if args.conf else default_conf(host))
        return 0
    if args.action == "jool-down":
        jool_down(host)
        return 0
    if args.action == "setup":
        if not args.conf:
            raise UsageError("setup: needs the rendered tayga.conf (CONF)")
        conf = Path(args.conf)
        if not conf.is_file():
            raise UsageError(f"setup: {conf}: no such file (netmux render tayga)")
        tayga_setup(host, conf)
    else:
        teardown(host)
    return 0
