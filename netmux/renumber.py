"""Renumbering: when the delegated prefix on the gateway changes, tell the workloads at once.

dhcpcd runs this as its hook (`script`, see render/dhcpcd.py) inside mux after every event.
It reads the gateway's global /64s (the truth, whatever dhcpcd's reason), compares them
with the last ones it saw, and when they differ:

- an old prefix goes on a deprecated list for 2 hours (RFC 4862 keeps addresses at least
  that long anyway), and radvd.conf is re-rendered with it as an explicit `prefix` block
  with AdvPreferredLifetime 0 — radvd's `prefix ::/64` ignores the addresses' own lifetimes
  (measured: a deprecated address on gw0 is still advertised as preferred);
- radvd gets SIGHUP: it reloads and sends an unsolicited RA at once (measured ~10 ms), so
  workloads add the new prefix and deprecate the old without waiting for a periodic RA;
- each change is logged with NETMUX_PREFIX and MESSAGE_ID=journal.PREFIX_CHANGED.

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

from . import journal

STATE_FILE = "prefixes.json"
KEEP_DEPRECATED = 7200.0


@dataclass(frozen=True)
class State:
    current: tuple[IPv6Network, ...] = ()
    deprecated: Mapping[IPv6Network, float] = field(default_factory=dict)  # prefix -> until

    def to_json(self) -> str:
        return json.dumps(
            {
                "current": [str(p) for p in self.current],
                "deprecated": {str(p): t for p, t in self.deprecated.items()},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> State:
        try:
            raw = json.loads(text)
            cur = tuple(IPv6Network(p) for p in raw.get("current", []))
            dep = {IPv6Network(p): float(t) for p, t in raw.get("deprecated", {}).items()}
        except (ValueError, TypeError, AttributeError):
            return cls()
        return cls(cur, dep)


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
    return Change(State(cur, dep), added, removed)


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


def gateway_prefixes(gateway: str, netns: str | None = None) -> list[IPv6Network]:
    """Global (non-ULA) /64s on the gateway that are still preferred."""
    argv = ["ip", *(["-n", netns] if netns else []), "-j", "-6", "addr", "show", "dev", gateway]
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    out: list[IPv6Network] = []
    with contextlib.suppress(ValueError, KeyError, TypeError):
        for link in json.loads(r.stdout or "[]"):
            for a in link.get("addr_info", []):
                if a.get("scope") != "global" or a.get("deprecated"):
                    continue
                if a.get("preferred_life_time", 1) == 0:
                    continue
                net = IPv6Network(f"{a['local']}/{a['prefixlen']}", strict=False)
                if net.prefixlen == 64 and not net.subnet_of(IPv6Network("fc00::/7")):
                    out.append(net)
    return out


def apply(
    change: Change,
    state_dir: Path,
    render_radvd: Callable[[list[IPv6Network]], str] | None,
    radvd_conf: Path | None,
    radvd_pid: Path | None,
    gateway: str,
) -> None:
    """Write the state, re-render radvd.conf, SIGHUP radvd, log. Only when it changed."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_path(state_dir).with_suffix(".tmp")
    tmp.write_text(change.state.to_json())
    tmp.replace(state_path(state_dir))
    if not change.changed:
        return
    for p in change.added:
        journal.info(f"prefix {p} on {gateway}", journal.PREFIX_CHANGED, prefix=p, ifname=gateway)
    for p in change.removed:
        journal.info(
            f"prefix {p} left {gateway}: advertised deprecated for {KEEP_DEPRECATED:.0f}s",
            journal.PREFIX_CHANGED,
            prefix=p,
            ifname=gateway,
        )
    if render_radvd and radvd_conf and radvd_conf.parent.is_dir():
        text = render_radvd(sorted(change.state.deprecated))
        tmp = radvd_conf.with_name(f".{radvd_conf.name}.tmp")
        tmp.write_text(text)
        tmp.replace(radvd_conf)
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
    prefixes = gateway_prefixes(gw)
    change = plan(load(state_dir), prefixes, time.time())
    journal.debug(f"dhcpcd hook: reason={reason} prefixes={[str(p) for p in prefixes]}")

    def render(dep: list[IPv6Network]) -> str:
        return radvd.render(cfg, daemons.radvd(), dep)

    apply(
        change,
        state_dir,
        render,
        Path(args.radvd_conf) if args.radvd_conf else None,
        Path(args.radvd_pid) if args.radvd_pid else None,
        gw,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
