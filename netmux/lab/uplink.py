"""The uplink side of mux when systemd is not in charge (the lab, tests, benches).

Under systemd, netmux-dhcpcd.service and netmux-tayga.service do this (units/); here the
same rendered configs run as supervised daemons (lab/supervise.py) in a run directory:

- dhcpcd in mux with private /run/dhcpcd and /var/lib/dhcpcd: its paths are compiled in,
  so it runs in a private mount namespace with per-instance directories bound over them
  (the host's dhcpcd, if any, never meets this one). Its hook is netmux.renumber.
- NAT64: the engine netmux.nat64 chooses; for tayga, what surrounds it (its TUN, routes,
  IPv4 forwarding, the NAT ruleset: nat64.tayga_setup, as netmux-tayga.service has it
  made), then tayga itself supervised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from .. import daemons, journal, nsutil
from ..config import HostConfig
from ..errors import StateError
from ..render import dhcpcd as dhcpcd_render
from ..render import tayga as tayga_render
from . import supervise

DHCPCD_RUN = Path("/run/dhcpcd")
DHCPCD_STATE = Path("/var/lib/dhcpcd")


def _sh(*argv: str, netns: str | None = None, stdin: str | None = None) -> str:
    full = ["nsenter", f"--net={nsutil.netns_path(netns)}", *argv] if netns else list(argv)
    r = subprocess.run(full, capture_output=True, text=True, input=stdin)
    if r.returncode != 0:
        raise StateError(f"uplink: `{' '.join(argv)}` failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def start_dhcpcd(
    host: HostConfig,
    run: Path,
    uplinks: list[str],
    radvd_conf: Path | None = None,
    radvd_pid: Path | None = None,
    config_path: Path | None = None,
) -> supervise.Daemon:
    """dhcpcd in mux requesting PD onto the gateway; the hook re-renders/HUPs radvd."""
    run.mkdir(parents=True, exist_ok=True)
    hook = run / dhcpcd_render.HOOK_NAME
    hook_text = dhcpcd_render.render_hook(
        dhcpcd_render.renumber_command(),
        str(config_path) if config_path else None,
        str(run),
        str(radvd_conf) if radvd_conf else None,
        str(radvd_pid) if radvd_pid else None,
        (host.uplink.ra_preferred_limit, host.uplink.ra_valid_limit),
    )
    hook.write_text(hook_text)
    hook.chmod(0o755)
    conf = run / "dhcpcd.conf"
    conf.write_text(dhcpcd_render.render(host, uplinks, host.uplink.hook or str(hook)))
    priv_run, priv_state = run / "dhcpcd-run", run / "dhcpcd-state"
    priv_run.mkdir(exist_ok=True)
    priv_state.mkdir(exist_ok=True)
    DHCPCD_RUN.mkdir(exist_ok=True)  # an empty mount point; the instance binds over it
    DHCPCD_STATE.mkdir(parents=True, exist_ok=True)
    script = (
        f"mount --bind {priv_run} {DHCPCD_RUN} && mount --bind {priv_state} {DHCPCD_STATE} "
        f"&& exec dhcpcd --nobackground --config {conf}"
    )
    argv = [
        "nsenter", f"--net={nsutil.netns_path(host.mux.netns)}", "--",
        "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return supervise.start("dhcpcd", argv, None, run, env=env)


def _session_members(sid: int) -> list[int]:
    """Live PIDs whose session is `sid` (dhcpcd's privsep helpers share its session)."""
    if sid <= 1:
        return []
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(d))
    return out


def stop_dhcpcd(run: Path, grace: float = 1.0) -> None:
    """Stop dhcpcd and its privsep helpers. supervise starts it in a session of its own;
    SIGTERM the manager, and whatever of that session still lives after `grace` seconds
    gets SIGKILL (a helper caught mid-DHCPv4 exchange otherwise holds the manager ~5 s)."""
    import time

    d = supervise.status("dhcpcd", run)
    if d is not None:
        sid = d.pid
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{d.pid}/stat").read_text()
            sid = int(stat[stat.rfind(")") + 2 :].split()[3])
        with contextlib.suppress(ProcessLookupError):
            os.kill(d.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in _session_members(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    supervise.stop("dhcpcd", run)


def nat64_up(host: HostConfig, run: Path) -> supervise.Daemon | None:
    """NAT64 in mux with the engine netmux.nat64 chooses: Jool's instance (None), or
    tayga's TUN, routes and NAT, then tayga itself (idempotent)."""
    from .. import nat64

    eng = nat64.engine(host)
    journal.info(f"nat64: engine {eng.name}: {eng.reason}", netns=host.mux.netns)
    if eng.name == "jool":
        nat64.jool_up(host, run / "jool.json")
        return None
    if eng.name == "none":
        raise StateError(f"nat64: no engine: {eng.reason}")
    data = run / "tayga-data"
    data.mkdir(parents=True, exist_ok=True)
    conf = run / "tayga.conf"
    conf.write_text(tayga_render.render(host, daemons.tayga(), data))
    nat64.tayga_setup(host, conf)
    argv = ["tayga", "--nodetach", "-c", str(conf)]
    return supervise.start("tayga", argv, host.mux.netns, run)


def nat64_down(host: HostConfig, run: Path) -> None:
    """tayga stopped (the lab supervises it), then what surrounds it removed."""
    from .. import nat64

    supervise.stop("tayga", run)
    nat64.teardown(host)
