"""Renumbering and lease lifetimes: keep radvd's view of the delegation current.

dhcpcd runs this as its hook (`script`, see render/dhcpcd.py) inside mux when the delegated
prefix changes and at every renewal whose lifetimes are shorter than the caps. It reads the
gateway's global /64s with their remaining lifetimes (the truth, whatever dhcpcd's
reason: dhcpcd sets them from the lease), compares the prefixes with the last ones it
saw, and:

- an old prefix goes on a deprecated list for 2 hours and is advertised with preferred
  lifetime 0 (render/radvd.py: explicit blocks, each with lifetimes of its own);
- the current prefixes are advertised with min(remaining lease, caps) (RFC 9096);
- when radvd.conf's text changed, radvd gets SIGHUP: it reloads, resets its countdown and
  sends an unsolicited RA at once (measured ~10 ms), so workloads follow without waiting
  for a periodic RA;
- each prefix change is logged with NETMUX_PREFIX and MESSAGE_ID=journal.PREFIX_CHANGED.

The pure part (`plan`) is unit-tested; `main` is the thin edge.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv6Network
from pathlib import Path

from . import files, journal
from .config import HostConfig
from .render.radvd import INFINITE, Lease

STATE_FILE = "prefixes.json"
KEEP_DEPRECATED = 7200.0


@dataclass(frozen=True)
class State:
    current: tuple[IPv6Network, ...] = ()
    deprecated: Mapping[IPv6Network, float] = field(default_factory=dict)  # prefix -> until
    since: Mapping[IPv6Network, float] = field(default_factory=dict)  # current -> first seen

    def to_json(self) -> str:
        return json.dumps(
            {
                "current": [str(p) for p in self.current],
                "deprecated": {str(p): t for p, t in self.deprecated.items()},
                "since": {str(p): t for p, t in self.since.items()},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> State:
        try:
            raw = json.loads(text)
            cur = tuple(IPv6Network(p) for p in raw.get("current", []))
            dep = {IPv6Network(p): float(t) for p, t in raw.get("deprecated", {}).items()}
            since = {IPv6Network(p): float(t) for p, t in raw.get("since", {}).items()}
        except (ValueError, TypeError, AttributeError):
            return cls()
        return cls(cur, dep, since)


@dataclass(frozen=True)
class Change:
    state: State
    added: tuple[IPv6Network, ...]
    removed: tuple[IPv6Network, ...]

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def plan(old: State, now_prefixes: Sequence[IPv6Network], now: float) -> Change:
    """The next state from the gateway's prefixes now. Pure."""
    cur = tuple(dict.fromkeys(now_prefixes))
    added = tuple(p for p in cur if p not in old.current)
    removed = tuple(p for p in old.current if p not in cur)
    dep = {p: t for p, t in old.deprecated.items() if t > now and p not in cur}
    for p in removed:
        dep[p] = now + KEEP_DEPRECATED
    since = {p: old.since.get(p, now) for p in cur}
    return Change(State(cur, dep, since), added, removed)


def renumbered(change: Change) -> bool:
    """A new prefix replaced an old one, whichever of the two dhcpcd reported first. Pure."""
    st = change.state
    return bool(change.added and (change.removed or st.deprecated)) or bool(
        change.removed and st.current
    )


def summary(state: State, leases: Sequence[Lease], now: float) -> dict[str, object]:
    """The prefixes for `netmux status` and the metrics: current ones with their remaining
    lease lifetimes and age, previous ones with when they were deprecated. Pure."""
    remaining = {x.prefix: x for x in leases}
    current = []
    for p in state.current:
        lease = remaining.get(p)
        forever = lease is None or lease.valid >= INFINITE
        current.append(
            {
                "prefix": str(p),
                "preferred_seconds": None if forever or lease is None else lease.preferred,
                "valid_seconds": None if forever or lease is None else lease.valid,
                "since": state.since.get(p),
                "age_seconds": round(now - state.since[p], 1) if p in state.since else None,
            }
        )
    previous = [
        {"prefix": str(p), "deprecated_at": until - KEEP_DEPRECATED, "advertised_until": until}
        for p, until in sorted(state.deprecated.items(), key=lambda kv: -kv[1])
    ]
    return {"current": current, "previous": previous}


def prefix_text(rep: Mapping[str, object]) -> str:
    """`summary` for people. Pure."""
    lines = []
    cur = rep.get("current") or []
    prev = rep.get("previous") or []
    assert isinstance(cur, list) and isinstance(prev, list)
    for c in cur:
        life = (
            f"preferred {c['preferred_seconds']}s, valid {c['valid_seconds']}s left"
            if c.get("valid_seconds") is not None
            else "static"
        )
        age = f", since {_when(c['since'])}" if c.get("since") else ""
        lines.append(f"prefix {c['prefix']}: {life}{age}")
    for p in prev:
        lines.append(
            f"previous {p['prefix']}: deprecated {_when(p['deprecated_at'])}, advertised "
            f"until {_when(p['advertised_until'])}"
        )
    if not cur:
        lines.append("prefix: none delegated")
    return "\n".join(lines) + "\n"


def _when(t: object) -> str:
    assert isinstance(t, int | float)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def prefix_report(cfg: HostConfig) -> dict[str, object]:
    """`summary` for this host: the hook's state (the run directory, or the lab's) and
    the gateway's remaining lifetimes."""
    dirs = [cfg.paths.run_dir, cfg.paths.run_dir / "lab"]
    found = [d for d in dirs if state_path(d).exists()]
    newest = max(found, key=lambda d: state_path(d).stat().st_mtime) if found else dirs[0]
    leases = current_leases(cfg.mux.gateway, cfg.mux.netns)
    return summary(load(newest), leases, time.time())


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def load(state_dir: Path) -> State:
    try:
        return State.from_json(state_path(state_dir).read_text())
    except OSError:
        return State()


def deprecated_prefixes(state_dir: Path, now: float | None = None) -> list[IPv6Network]:
    """The prefixes radvd must still advertise as deprecated (for `netmux render radvd`)."""
    t = time.time() if now is None else now
    return sorted(p for p, until in load(state_dir).deprecated.items() if until > t)


def gateway_leases(gateway: str, netns: str | None = None) -> list[Lease]:
    """Global (non-ULA) /64s on the gateway that are still preferred, with their remaining
    lifetimes (radvd.INFINITE for a static address)."""
    argv = ["ip", *(["-n", netns] if netns else []), "-j", "-6", "addr", "show", "dev", gateway]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    out: dict[IPv6Network, Lease] = {}
    with contextlib.suppress(ValueError, KeyError, TypeError):
        for link in json.loads(r.stdout or "[]"):
            for a in link.get("addr_info", []):
                if a.get("scope") != "global" or a.get("deprecated"):
                    continue
                if a.get("preferred_life_time", 1) == 0:
                    continue
                net = IPv6Network(f"{a['local']}/{a['prefixlen']}", strict=False)
                if net.prefixlen == 64 and not net.subnet_of(IPv6Network("fc00::/7")):
                    pl = int(a.get("preferred_life_time", INFINITE))
                    vl = int(a.get("valid_life_time", INFINITE))
                    prev = out.get(net)
                    if prev is None or vl > prev.valid:  # two addresses: the longer lease
                        out[net] = Lease(net, pl, vl)
    return list(out.values())


def current_leases(gateway: str, netns: str) -> list[Lease]:
    """The gateway's leases from wherever this runs: through /run/netns, or from inside
    mux where entering it is not allowed (netmux-radvd's ExecStartPre has no
    CAP_SYS_ADMIN) but the unit already runs there."""
    for ns in (netns, None):
        argv = ["ip", *(["-n", ns] if ns else []), "link", "show", "dev", gateway]
        if subprocess.run(argv, capture_output=True).returncode == 0:
            return gateway_leases(gateway, ns)
    return []


def gateway_prefixes(gateway: str, netns: str | None = None) -> list[IPv6Network]:
    """Global (non-ULA) /64s on the gateway that are still preferred."""
    return [lease.prefix for lease in gateway_leases(gateway, netns)]


def apply(
    change: Change,
    state_dir: Path,
    render_radvd: Callable[[list[IPv6Network]], str] | None,
    radvd_conf: Path | None,
    radvd_pid: Path | None,
    gateway: str,
    countdown: bool = False,
) -> None:
    """Write the state and log prefix changes; re-render radvd.conf and SIGHUP radvd when
    its text changed, or always under `countdown` (radvd counts a lease's lifetimes down
    since its last reload: a renewed lease must restart the count, same text or not)."""
    files.write_atomic(state_path(state_dir), change.state.to_json())
    for p in change.added:
        journal.info(f"prefix {p} on {gateway}", journal.PREFIX_CHANGED, prefix=p, ifname=gateway)
    for p in change.removed:
        journal.info(
            f"prefix {p} left {gateway}: advertised deprecated for {KEEP_DEPRECATED:.0f}s",
            journal.PREFIX_CHANGED,
            prefix=p,
            ifname=gateway,
        )
    if renumbered(change):  # one event per renumbering, old -> new
        old = change.removed or tuple(change.state.deprecated)
        new = change.added or change.state.current
        journal.info(
            f"renumbered: {', '.join(map(str, old))} -> {', '.join(map(str, new))} on {gateway}",
            journal.RENUMBERED,
            prefix=new[0],
            ifname=gateway,
        )
    if render_radvd and radvd_conf and radvd_conf.parent.is_dir():
        text = render_radvd(sorted(change.state.deprecated))
        with contextlib.suppress(OSError):
            if radvd_conf.read_text() == text and not (change.changed or countdown):
                return
        files.write_atomic(radvd_conf, text)
    elif not (change.changed or countdown):
        return
    if radvd_pid:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(radvd_pid.read_text().split()[0])
            if pid > 1:  # never 0 or -1: that would signal a whole process group
                os.kill(pid, signal.SIGHUP)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="netmux.renumber", description=__doc__)
    ap.add_argument("--state", required=True, help="directory for prefixes.json")
    ap.add_argument("--config", help="netmux.toml (default: the usual lookup)")
    ap.add_argument("--radvd-conf", help="radvd.conf to re-render (default: none)")
    ap.add_argument("--radvd-pid", help="radvd's pidfile, for SIGHUP (default: none)")
    args = ap.parse_args(argv)
    if "JOURNAL_STREAM" not in os.environ and Path("/run/systemd/journal/socket").exists():
        # dhcpcd runs hooks with a scrubbed environment; under systemd our stderr is its
        # journal stream, so log structured (NETMUX_PREFIX, MESSAGE_ID) instead of text.
        st = os.fstat(2)
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    from . import config, daemons
    from .render import radvd

    cfg = config.load_host(Path(args.config) if args.config else None)
    reason = os.environ.get("reason", "")  # noqa: SIM112 (dhcpcd sets lower-case names)
    gw = cfg.mux.gateway
    state_dir = Path(args.state)
    state_dir.mkdir(parents=True, exist_ok=True)
    # dhcpcd may run hooks back to back; one at a time, each reading the gateway inside
    # the lock, so the last one to finish saw the final state.
    lock = os.open(state_dir / ".renumber.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    leases = gateway_leases(gw)
    prefixes = [lease.prefix for lease in leases]
    change = plan(load(state_dir), prefixes, time.time())
    journal.debug(
        f"dhcpcd hook: reason={reason} leases="
        + ", ".join(f"{x.prefix} {x.preferred}/{x.valid}s" for x in leases)
    )

    def render(dep: list[IPv6Network]) -> str:
        return radvd.render(cfg, daemons.radvd(), dep, leases)

    up = cfg.uplink
    countdown = any(
        radvd.advertised(x, up.ra_preferred_limit, up.ra_valid_limit).decrement for x in leases
    )
    apply(
        change,
        state_dir,
        render,
        Path(args.radvd_conf) if args.radvd_conf else None,
        Path(args.radvd_pid) if args.radvd_pid else None,
        gw,
        countdown,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
