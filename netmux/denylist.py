"""The source-prefix denylist in mux: `netmux deny add|del|list|count|log`.

The kernel holds the truth (the guard table's `@deny` and `@auto` sets, see firewall.py);
manual entries are also kept in STATE_DIR/denylist.json so that `mux up` reloads them
(with their remaining timeouts). `count` is manual + automatic entries: one number for a
status bar. `log` writes that number to the journal (MESSAGE_ID=journal.DENYLIST_SIZE);
`log --watch` does so every deny.log_interval seconds (units/netmux-denylog.service).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

from . import files, firewall, journal, nsutil
from .config import HostConfig
from .errors import NetmuxError, StateError, UsageError

PREFIX_ALLOWED = "an IPv6 prefix with host bits clear, such as 2001:db8:bad::/48, or one address"


@dataclass(frozen=True)
class Denied:
    """One entry as the kernel shows it: `source` is 'manual' or 'auto'."""

    prefix: IPv6Network
    source: str
    expires: float | None  # seconds left, None = never

    def as_json(self) -> dict[str, Any]:
        return {"prefix": str(self.prefix), "source": self.source, "expires": self.expires}


def parse_prefix(text: str | None) -> IPv6Network:
    if not text:
        raise UsageError(f"deny: a PREFIX is needed: {PREFIX_ALLOWED}")
    try:
        return IPv6Network(text.strip(), strict=True)
    except ValueError:
        raise UsageError(f"deny: {text!r} is not allowed: {PREFIX_ALLOWED}") from None


# --- persisted manual entries --------------------------------------------------------------


def state_file(host: HostConfig) -> Path:
    return host.paths.state_dir / "denylist.json"


def _read_state(host: HostConfig) -> dict[str, float | None]:
    try:
        data = json.loads(state_file(host).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise StateError(f"{state_file(host)}: unreadable denylist ({e})") from None
    return {str(k): (float(v) if v is not None else None) for k, v in data.items()}


def _write_state(host: HostConfig, entries: dict[str, float | None]) -> None:
    path = state_file(host)
    files.write_atomic(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")


def entries_to_load(state: dict[str, float | None], now: float) -> list[firewall.DenyEntry]:
    """Persisted entries with their remaining timeouts; expired ones are left out. Pure."""
    out = []
    for prefix, expires in sorted(state.items()):
        if expires is None:
            out.append(firewall.DenyEntry(IPv6Network(prefix)))
        elif expires - now >= 1:
            out.append(firewall.DenyEntry(IPv6Network(prefix), expires - now))
    return out


def load(host: HostConfig) -> list[firewall.DenyEntry]:
    return entries_to_load(_read_state(host), time.time())


# --- the kernel's sets ---------------------------------------------------------------------


def _mux(host: HostConfig) -> str:
    netns = host.mux.netns
    if not nsutil.netns_path(netns).exists():
        raise StateError(f"the mux namespace {netns!r} does not exist: run `netmux mux up`")
    return netns


def ensure_guard(host: HostConfig) -> str:
    """mux's netns name, with the guard table loaded if it was not yet."""
    netns = _mux(host)
    try:
        firewall.run_nft(netns, f"list table {firewall.FAMILY} {firewall.GUARD_TABLE}")
    except firewall.NftError:
        apply_guard(host)
    return netns


def apply_guard(host: HostConfig) -> None:
    """mux's guard table with the persisted denylist (idempotent; `mux up` calls it)."""
    firewall.apply(host.mux.netns, firewall.render_guard(host, load(host)))


def guard_at_mux_up(host: HostConfig) -> None:
    """`mux up`: load the guard table unless it is there (a re-run keeps auto-denials).

    A failure is logged, not raised: mux without its guard still routes, and the next
    `netmux deny` (or netmux-denylog.service) loads it.
    """
    try:
        ensure_guard(host)
    except NetmuxError as e:
        journal.error(f"mux {host.mux.netns}: the guard table is not loaded: {e}")


def _elem_prefix(val: Any) -> IPv6Network:
    if isinstance(val, str):
        return IPv6Network(val)
    if "prefix" in val:
        return IPv6Network(f"{val['prefix']['addr']}/{val['prefix']['len']}")
    if "range" in val:  # never written by netmux; shown as its first address
        return IPv6Network(val["range"][0])
    raise StateError(f"unexpected nftables set element {val!r}")


def parse_set(out: Any, source: str, prefix_length: int = 128) -> list[Denied]:
    """Entries from `nft -j list set` output. Pure."""
    found: list[Denied] = []
    for item in (out or {}).get("nftables", []):
        s = item.get("set")
        if not s:
            continue
        for elem in s.get("elem", []):
            expires = None
            if isinstance(elem, dict) and "elem" in elem:
                expires = elem["elem"].get("expires")
                elem = elem["elem"]["val"]
            prefix = _elem_prefix(elem)
            if source == "auto":
                prefix = IPv6Network(f"{prefix.network_address}/{prefix_length}", strict=False)
            found.append(Denied(prefix, source, float(expires) if expires is not None else None))
    return found


def _list_set(netns: str, name: str) -> Any:
    return firewall.run_nft(netns, f"list set {firewall.FAMILY} {firewall.GUARD_TABLE} {name}")


def entries(host: HostConfig) -> list[Denied]:
    netns = ensure_guard(host)
    manual = parse_set(_list_set(netns, "deny"), "manual")
    auto = parse_set(_list_set(netns, "auto"), "auto", host.deny.prefix_length)
    agg = firewall.aggregate_length(host)
    if agg:
        with contextlib.suppress(firewall.NftError):  # a guard table loaded by an older netmux
            auto += parse_set(_list_set(netns, "auto_agg"), "auto", agg)
    return manual + auto


def count(host: HostConfig) -> int:
    return len(entries(host))


def add(host: HostConfig, prefix: IPv6Network, timeout: float | None = None) -> None:
    """Deny `prefix` (for `timeout` seconds, or until removed). Re-adding updates the timeout."""
    if timeout is not None and timeout < 1:
        raise UsageError(f"deny add: --timeout {timeout} is not allowed; at least 1 second")
    netns = ensure_guard(host)
    state = _read_state(host)
    elem = firewall.DenyEntry(prefix, timeout).nft()
    key = str(prefix)
    table = f"{firewall.FAMILY} {firewall.GUARD_TABLE}"
    cmds = []
    if key in state:
        cmds.append(f"delete element {table} deny {{ {firewall.DenyEntry(prefix).nft()} }}")
    cmds.append(f"add element {table} deny {{ {elem} }}")
    try:
        firewall.run_nft(netns, "\n".join(cmds))
    except firewall.NftError as e:
        if "overlap" in str(e):
            overlapping = [d for d in entries(host) if d.prefix.overlaps(prefix)]
            shown = ", ".join(str(d.prefix) for d in overlapping) or "an existing entry"
            raise UsageError(
                f"deny add: {prefix} overlaps {shown}; remove that first (`netmux deny del`)"
            ) from None
        raise
    state[key] = time.time() + timeout if timeout else None
    _write_state(host, state)
    journal.info(f"denied {prefix}", prefix=prefix)


def remove(host: HostConfig, prefix: IPv6Network) -> bool:
    """Remove a manual entry, or an automatic one of exactly that prefix. False if absent."""
    netns = ensure_guard(host)
    table = f"{firewall.FAMILY} {firewall.GUARD_TABLE}"
    removed = False
    with contextlib.suppress(firewall.NftError):
        firewall.run_nft(
            netns, f"delete element {table} deny {{ {firewall.DenyEntry(prefix).nft()} }}"
        )
        removed = True
    if prefix.prefixlen == host.deny.prefix_length:
        with contextlib.suppress(firewall.NftError):
            firewall.run_nft(netns, f"delete element {table} auto {{ {prefix.network_address} }}")
            removed = True
    if prefix.prefixlen == firewall.aggregate_length(host):
        with contextlib.suppress(firewall.NftError):
            elem = f"{{ {prefix.network_address} }}"
            firewall.run_nft(netns, f"delete element {table} auto_agg {elem}")
            removed = True
    state = _read_state(host)
    if state.pop(str(prefix), "absent") != "absent":
        _write_state(host, state)
    if removed:
        journal.info(f"no longer denied: {prefix}", prefix=prefix)
    return removed


def auto_denials(host: HostConfig) -> int:
    """Packets that triggered an automatic denial since the guard table was loaded."""
    netns = _mux(host)
    try:
        out = firewall.run_nft(
            netns, f"list counter {firewall.FAMILY} {firewall.GUARD_TABLE} auto_denials"
        )
    except firewall.NftError:
        return 0
    for item in (out or {}).get("nftables", []):
        if "counter" in item:
            return int(item["counter"]["packets"])
    return 0


def log_size(host: HostConfig) -> int:
    found = entries(host)
    n = len(found)
    auto = sum(1 for d in found if d.source == "auto")
    journal.info(
        f"denylist size {n} ({auto} automatic)",
        message_id=journal.DENYLIST_SIZE,
        netmux_denylist_size=n,
        netmux_denylist_auto=auto,
    )
    return n


# --- CLI -----------------------------------------------------------------------------------


def cmd_deny(args: argparse.Namespace, host: HostConfig) -> int:
    action = args.action
    if action == "add":
        add(host, parse_prefix(args.prefix), getattr(args, "timeout", None))
    elif action == "del":
        prefix = parse_prefix(args.prefix)
        if not remove(host, prefix):
            raise StateError(f"deny del: {prefix} is not on the denylist")
    elif action == "count":
        print(count(host))
    elif action == "log":
        log_size(host)
        while getattr(args, "watch", False):
            time.sleep(host.deny.log_interval)
            try:
                log_size(host)
            except StateError as e:  # mux down for a while: say so, keep watching
                journal.warning(f"denylist size unknown: {e}")
    elif action == "list":
        found = entries(host)
        if getattr(args, "json", False):
            print(json.dumps([d.as_json() for d in found], indent=2))
        else:
            for d in found:
                left = "never" if d.expires is None else f"{d.expires:.0f}s"
                print(f"{d.prefix!s:<45} {d.source:<7} expires {left}")
    return 0


__all__ = ["Denied", "add", "count", "entries", "remove"]
