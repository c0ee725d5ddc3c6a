"""One workload's life: up (validate, build, wait, report, exec), down, exec, run, status.

`up` validates everything before it changes anything (name, user, command, mux, name not
in use); once it has created something, any failure rolls back what this instance made,
so nothing is ever left half-built. `down` is idempotent and works whatever state the
workload is in (fully up, half-built by a SIGKILLed `up`, its command killed); `up`
rebuilds a half-built one of its own. Only namespaces carrying netmux's mark are ever
touched (see Instance and links.set_mark).

No Python process stays resident: `up NAME -- CMD` ends by exec'ing CMD inside the
namespace (same PID, so systemd's Type=notify main process is the workload itself);
`up NAME` without CMD returns, leaving the namespace to units that join it.

VMs (`--vm`): the macvtap lives in the workload's own namespace /run/netns/NAME, like a
macvlan, so `down`, `status` and the firewall treat both kinds alike; QEMU only needs the
tap's file descriptor, which is opened here by its own major:minor (tap.py) and
inherited across exec as {tapfd}. QEMU
itself is exec'd inside the namespace too, so nothing of the VM is in the root namespace.
The host side of the macvtap gets no IPv6 of its own (disable_ipv6) and allmulticast
(links.child_link_flags): the guest does SLAAC with the MAC netmux gives it ({mac}), and
phonebookd learns the guest's addresses from its neighbour discovery (phonebook/follow.py).
A VM's QEMU is the unit's main process, so its end ends the unit.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import ipaddress
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import (
    become,
    config,
    files,
    firewall,
    journal,
    links,
    mux,
    names,
    nsutil,
    resolv,
    routed,
    sd,
    tap,
)
from .config import HostConfig, WorkloadConfig
from .errors import NetmuxError, StateError, UsageError
from .phonebook import client as phonebook
from .state import known, read_state, state_path
from .state import write_state as _write_state

TAPFD = tap.TAPFD
MAC = tap.MAC


@dataclass(frozen=True)
class Plan:
    """Everything `up` will do, computed and checked before anything is changed."""

    name: str
    kind: str  # "macvlan", "macvtap" or "veth" (link = "routed": see routed.py)
    ifname: str
    mac: str
    secret: str
    wait: str
    timeout: float
    cmd: tuple[str, ...]
    user: pwd.struct_passwd | None
    gid: int | None
    key_id: str = ""
    repair: str = ""  # why a half-built workload of ours is rebuilt ("" = a fresh one)
    routed: tuple[ipaddress.IPv6Address, ...] = ()  # a routed link's addresses
    drop_caps: tuple[int, ...] = ()  # out of the command's bounding set (become.py)


@dataclass(frozen=True)
class Instance:
    """One build of a workload: its namespace held open by fd and the token marking it.

    Every step of `up` acts on `fd`, never on the name, and its rollback removes the name
    and the state only while they still belong to this instance: an `up` that was paused
    while another `down` + `up` replaced it can only ever touch what it made itself.
    """

    name: str
    token: str
    fd: int


def _mark(token: str) -> str:
    return links.MARK_PREFIX + token


def _token(mark: str | None) -> str | None:
    if mark and mark.startswith(links.MARK_PREFIX):
        return mark[len(links.MARK_PREFIX) :]
    return None


def lookup_user(spec: str, what: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
    except KeyError:
        raise UsageError(f"{what}: unknown user {spec!r} (not in the passwd database)") from None


def lookup_group(spec: str, what: str) -> int:
    try:
        return grp.getgrgid(int(spec)).gr_gid if spec.isdigit() else grp.getgrnam(spec).gr_gid
    except KeyError:
        raise UsageError(f"{what}: unknown group {spec!r} (not in the group database)") from None


def plan(
    host: HostConfig, wl: WorkloadConfig, cmd: tuple[str, ...] = (), free: bool = True
) -> Plan:
    """Check everything `up` needs; raise a one-line error and change nothing otherwise.
    `free=False`: NAME is this process's own build ahead (see `prebuild`), not checked."""
    name = names.check_name(wl.name)
    if name == host.mux.netns:
        raise UsageError(f"{name!r} is the mux namespace's name, not a workload's")
    user = lookup_user(wl.user, f"workload {name}: user") if wl.user else None
    gid = lookup_group(wl.group, f"workload {name}: group") if wl.group else None
    if cmd:
        exe = cmd[0]
        found = shutil.which(exe) if "/" not in exe else (exe if os.access(exe, os.X_OK) else None)
        if not found:
            raise UsageError(f"workload {name}: command {exe!r} not found or not executable")
    if wl.kind == "vm" and wl.link == "routed":
        raise UsageError(
            f'workload {name}: link = "routed" is for processes, not VMs '
            "(a VM's macvtap sits on the segment; its egress guard filters it)"
        )
    routed_link = config.effective_link(host, wl) == "routed"
    kind = "macvtap" if wl.kind == "vm" else "veth" if routed_link else "macvlan"
    if kind == "macvtap" and cmd and not any(TAPFD in a for a in cmd):
        raise UsageError(
            f"workload {name}: a VM command needs {TAPFD} where QEMU takes the tap's fd, "
            f"e.g. -netdev tap,id=n0,fd={TAPFD} -device virtio-net,netdev=n0,mac={MAC}"
        )
    mux.require(host)
    _require_host_mounts(name, "create")  # before the name's state: what to start comes first
    repair = _repair_reason(host, name) if free else ""
    key = names.load_host_key(host.paths.host_key)
    key_id = names.key_id(key)
    check_host_key(host, key_id)
    wait = "none" if kind == "macvtap" else config.effective_wait(host, wl)
    secret = names.stable_secret(key, name)
    return Plan(
        name=name,
        kind=kind,
        ifname=host.workload.ifname,
        mac=names.stable_mac(key, name),
        secret=secret,
        wait=wait,
        timeout=config.effective_timeout(host, wl),
        cmd=tuple(cmd),
        user=user,
        gid=gid,
        key_id=key_id,
        repair=repair,
        routed=routed.addresses(host, wl, secret, wait) if routed_link else (),
        drop_caps=() if wl.sys_admin else (become.CAP_SYS_ADMIN,),
    )


def _repair_reason(host: HostConfig, name: str) -> str:
    """Empty if NAME is free; why an existing workload of ours gets rebuilt (half-built, no
    link); StateError if it is complete, being built, or not netmux's at all."""
    path = nsutil.netns_path(name)
    if not os.path.lexists(path):
        return ""
    st = read_state(host, name) or {}
    mark = links.read_mark(name)
    token = _token(mark)
    if token is None and st and "token" not in st:  # made before namespaces were marked
        raise StateError(f"workload {name!r} is already up: `netmux down {name}` first")
    if token is None:
        if nsutil.is_netns(path) or not st:
            raise StateError(
                f"network namespace {path} exists and was not made by netmux: "
                f"not touching it (choose another name or remove it yourself)"
            )
        return "an empty namespace mount point"
    pid = st.get("pid")
    if st.get("phase") == "building" and isinstance(pid, int) and _alive(pid):
        raise StateError(f"workload {name!r} is being built by pid {pid}: wait for it")
    try:
        with links.iproute(name) as ipr:
            has_link = links.link_index(ipr, str(st.get("ifname") or host.workload.ifname))
    except OSError:
        has_link = None
    if st.get("phase") == "up" and st.get("token") == token and has_link is not None:
        raise StateError(
            f"workload {name!r} is already up (network namespace {path}): "
            f"`netmux down {name}` first"
        )
    if not st:
        return "no state"
    return "no link" if has_link is None else "half-built"


def other_key_workloads(host: HostConfig, key_id: str | None) -> list[str]:
    """Workloads whose state was made with another host key than `key_id` (None: there
    is no key file at all)."""
    other = []
    for n in known(host):
        kid = (read_state(host, n) or {}).get("key_id")
        if isinstance(kid, str) and kid != key_id:
            other.append(n)
    return other


def check_host_key(host: HostConfig, key_id: str) -> list[str]:
    """Workloads whose state was made with another host key (the key file was lost and a
    new one made: every MAC and address changes). Logged as an error; doctor FAILs."""
    other = other_key_workloads(host, key_id)
    if other:
        journal.error(
            f"host key {host.paths.host_key} is not the key workload(s) "
            f"{', '.join(other)} were made with: it was lost or replaced, and their MACs and "
            f"addresses change; restore the old file from a backup, then "
            f"`netmux down NAME && netmux up NAME`"
        )
    return other


def build(host: HostConfig, wl: WorkloadConfig, p: Plan) -> tuple[links.LinkState, Instance]:
    """Create the namespace and the link, configure, bring up, wait. Rolls back on failure."""
    name = p.name
    _require_host_mounts(name, "create")
    token = secrets.token_hex(8)
    # The state goes first, so that a SIGKILL at any later point leaves a record of it.
    _write_state(host, name, {"name": name, "phase": "building", "pid": become.main_pid(),
                              "ifname": p.ifname, "kind": wl.kind, "token": token,
                              "key_id": p.key_id, "wait": p.wait,
                              **_routed_state(p)})  # fmt: skip
    try:
        fd = links.create_marked_netns(name, _mark(token))  # StateError if the name is taken
    except BaseException:
        _unlink_state(host, name, token)
        raise
    inst = Instance(name, token, fd)
    try:
        resolv.write(host, name)  # the RDNSS address for `ip netns exec` and our exec paths
        if p.kind == "veth":
            routed.attach(host, name, p.ifname, p.mac, p.secret, p.routed, fd)
        else:
            with links.iproute(host.mux.netns) as mipr:
                links.create_child_link(
                    mipr, host.mux.parent, p.ifname, p.mac, p.kind, target_netns=fd
                )
        if p.kind == "veth":
            sysctls = []  # routed.attach wrote the workload end's
        elif p.kind == "macvtap":
            sysctls = [(f"net.ipv6.conf.{p.ifname}.disable_ipv6", "1")]
        else:
            sysctls = links.workload_sysctls(
                p.ifname, p.secret, host.workload.optimistic_dad, _start_retrans(host)
            )
        links.sysctl_write(fd, sysctls)
        # firewall: inbound default drop + declared ports, before the link goes up.
        firewall.apply_workload(host, wl, fd, (p.ifname, p.mac))  # + egress guard
        if p.kind == "macvtap" and wl.ports:
            journal.warning(
                f"workload {name}: ports do not filter a VM (a macvtap's frames bypass the "
                "namespace's firewall): filter inside the guest",
                workload=name,
            )
        groups = links.RTMGRP_IPV6_IFADDR | links.RTMGRP_IPV6_ROUTE | links.RTMGRP_LINK
        events = nsutil.run_in_netns(fd, lambda: links.event_socket(groups))
        early_rs = None
        if p.kind == "macvlan" and host.workload.optimistic_dad and p.wait != "none":
            try:
                early_rs = nsutil.run_in_netns(fd, lambda: links.rs_socket(p.ifname))
            except OSError as e:  # e.g. no CAP_NET_RAW: the kernel's own RS still comes
                journal.debug(f"workload {name}: no early router solicitation: {e}")
        try:
            with links.iproute(fd) as ipr:
                links.set_up(ipr, "lo")
                statics = wl.addresses if p.kind == "macvlan" else ()
                if statics:
                    links.add_addresses(
                        ipr, p.ifname, statics, optimistic=host.workload.optimistic_dad
                    )
                if p.routed:
                    routed.addresses_on(ipr, p.ifname, p.routed)
                links.set_up(ipr, p.ifname)
                if p.kind == "veth":
                    links.default_via_gateway(ipr, p.ifname)
                state = links.wait_ready(
                    ipr,
                    events,
                    p.ifname,
                    p.wait,
                    p.timeout,
                    host.mux.gateway,
                    required=tuple(a.ip for a in statics) + p.routed,
                    solicit=early_rs,
                )
        finally:
            events.close()
            if early_rs is not None:
                early_rs.close()
        # phonebook: published by up() once the state is written (phonebook.client).
        return state, inst
    except BaseException:
        _rollback(host, inst, p.ifname)
        os.close(fd)
        raise


# --- building ahead ---------------------------------------------------------------------


@dataclass(frozen=True)
class Prebuilt:
    """A workload built before its `netmux up` asked (the launcher does it while systemd
    still sets up the unit: netmux/unitwatch.py), held by this process until that `up`
    comes. Used only if that `up` wants the very same build (`_claim`); its DNS records
    are published by that `up`, never ahead."""

    host: HostConfig
    wl: WorkloadConfig  # `_build_only`
    plan: Plan
    state: links.LinkState | None  # None: the build failed with `error`
    inst: Instance | None
    elapsed: float
    error: NetmuxError | None = None


_prebuilt: Prebuilt | None = None


def _build_only(wl: WorkloadConfig) -> WorkloadConfig:
    """`wl` without what `build` does not use (the command, who runs it, DNS names): a
    unit's User= or a drop-in's command still finds its workload built ahead."""
    return replace(wl, command=(), user="", group="", dns_names=(), publish=True, sys_admin=False)


def _build_fields(p: Plan) -> tuple[object, ...]:
    return (p.name, p.kind, p.ifname, p.mac, p.secret, p.wait, p.timeout, p.key_id, p.routed)


def prebuild(host: HostConfig, name: str) -> Prebuilt | None:
    """Build workload NAME as its workload file alone says (no unit environment, no
    command line), ahead of its `up`; None when there is nothing to do ahead (a bad name,
    a workload that is up or half-built: its `up` reports or repairs). A build that fails
    with netmux's own error is kept as that error: the same `up` would fail the same way,
    and must not wait for a second timeout."""
    global _prebuilt
    discard_prebuilt()
    try:
        wl = _build_only(config.load_workload(host, name, env={}))
        p = plan(host, wl)
    except NetmuxError:
        return None
    if p.repair:
        return None
    t0 = time.monotonic()
    try:
        state, inst = build(host, wl, p)
    except NetmuxError as e:
        _prebuilt = Prebuilt(host, wl, p, None, None, time.monotonic() - t0, e)
        return _prebuilt
    _prebuilt = Prebuilt(host, wl, p, state, inst, time.monotonic() - t0)
    journal.debug(f"workload {name}: built ahead in {_prebuilt.elapsed:.3f}s", workload=name)
    return _prebuilt


def discard_prebuilt() -> None:
    """Remove what `prebuild` made and nobody claimed (only that instance: the name may
    be another's by now)."""
    global _prebuilt
    pre, _prebuilt = _prebuilt, None
    if pre is not None:
        _prebuilt_gone(pre)


def _claim(host: HostConfig, wl: WorkloadConfig) -> Prebuilt | None:
    """The build ahead, if it is workload `wl`'s as `wl` wants it and still intact;
    otherwise it is removed and `up` builds afresh. Raises the build's error."""
    global _prebuilt
    pre = _prebuilt
    if pre is None:
        return None
    if pre.plan.name != wl.name or pre.host != host or pre.wl != _build_only(wl):
        journal.info(f"workload {pre.plan.name}: built ahead with other settings than "
                     f"{wl.name}'s `up` has; building it again", workload=wl.name)  # fmt: skip
        discard_prebuilt()
        return None
    if pre.error is not None:
        _prebuilt = None
        raise pre.error
    assert pre.inst is not None
    st = read_state(host, pre.inst.name) or {}
    if (nsutil.netns_id(pre.inst.name) != nsutil.netns_id(pre.inst.fd)
            or st.get("token") != pre.inst.token):  # fmt: skip
        journal.info(f"workload {wl.name}: what was built ahead was removed meanwhile; "
                     "building it again", workload=wl.name)  # fmt: skip
        discard_prebuilt()
        return None
    _prebuilt = None
    return pre


def _start_retrans(host: HostConfig) -> int:
    """The neighbour retransmit timer while a workload starts: it paces DAD (one probe),
    so a short one publishes sooner (docs/benchmarks.md, "The launcher's own cost"); never
    longer than the timer it runs with afterwards."""
    return min(host.workload.start_retrans_time_ms, host.workload.retrans_time_ms)


def up(
    host: HostConfig, wl: WorkloadConfig, cmd: tuple[str, ...] = (), exec_cmd: bool = True
) -> int:
    """`netmux up NAME [-- CMD]`: build the workload, report, then exec CMD or return 0."""
    pre = _claim(host, wl)
    try:
        p = plan(host, wl, cmd, free=pre is None)
    except BaseException:
        if pre is not None:
            _prebuilt_gone(pre)
        raise
    if pre is not None and _build_fields(p) != _build_fields(pre.plan):
        _prebuilt_gone(pre)
        pre = None
        p = plan(host, wl, cmd)
    if p.repair:
        journal.info(f"workload {p.name}: rebuilding it ({p.repair})", workload=p.name)
        down(host, p.name)
    if pre is not None and pre.state is not None and pre.inst is not None:
        state, inst, elapsed = pre.state, pre.inst, pre.elapsed
    else:
        t0 = time.monotonic()
        state, inst = build(host, wl, p)
        elapsed = time.monotonic() - t0
    try:
        vm_exec = p.kind == "macvtap" and bool(p.cmd) and exec_cmd
        tap_fd = _open_tap(p, inst.fd) if vm_exec else None  # for the exec'd QEMU only
        addrs = links.split_addresses(state.addrs)
        record = {
            "name": p.name,
            "phase": "up",
            "token": inst.token,
            "key_id": p.key_id,
            "wait": p.wait,
            "kind": wl.kind,
            "netns": p.name,
            "netns_path": str(nsutil.netns_path(p.name)),
            "ifname": p.ifname,
            "mac": p.mac,
            **_routed_state(p),
            "user": p.user.pw_name if p.user else None,
            "command": list(p.cmd),
            "pid": become.main_pid(),
            "started": time.time(),
            "up_seconds": round(elapsed, 4),
            "addresses": addrs,
            "dns": [],  # only names phonebookd really publishes (below)
        }
        if nsutil.netns_id(p.name) != nsutil.netns_id(inst.fd):
            raise StateError(f"workload {p.name}: replaced by another `up` while this one built")
        _write_state(host, p.name, record)
        # phonebook: DNS records while the lifeline lives (CMD inherits it; see client.py).
        pub = None
        if wl.publish:
            hold = "exec" if p.cmd and exec_cmd else ("self" if not exec_cmd else "unit")
            pub = phonebook.publish_workload(
                p.name,
                p.ifname,
                wl.dns_names,
                hold,
                host.workload.timeout,
                host.phonebook.socket,
            )
        published = [n.rstrip(".") for n in pub.names] if pub is not None else []
        if p.kind == "macvlan" and _start_retrans(host) != host.workload.retrans_time_ms:
            # DAD of the start's addresses is over once published (phonebookd publishes no
            # tentative address) or, unpublished, armed with the short timer already.
            key = f"net.ipv6.neigh.{p.ifname}.retrans_time_ms"
            links.sysctl_write(inst.fd, [(key, str(host.workload.retrans_time_ms))])
        if published:
            record["dns"] = published
            _write_state(host, p.name, record)
    except BaseException:
        _rollback(host, inst, p.ifname)
        raise
    finally:
        os.close(inst.fd)
    best = state.global_addrs or state.ula_addrs
    main_addr = str(best[0]) if best else None  # "addr/len": the journal adds NETMUX_PREFIX
    ahead = " (built ahead)" if pre is not None else ""
    journal.info(
        f"workload {p.name} up in {elapsed:.3f}s{ahead}: {p.ifname} {p.mac} "
        + " ".join(addrs["global"] + addrs["ula"]),
        message_id=journal.WORKLOAD_UP,
        workload=p.name,
        netns=p.name,
        address=main_addr,
        ifname=p.ifname,
    )
    sd.notify(status=_status_line(addrs, published), ready="1")
    if not p.cmd or not exec_cmd:
        return 0
    argv = tap.substitute(p.cmd, tap_fd, p.mac)
    fds = tuple(fd for fd in (tap_fd, pub.lifeline if pub else None) if fd is not None)
    token = inst.token
    exec_in(p.name, argv, p.user, p.gid, pass_fds=fds, drop_caps=p.drop_caps,
            undo=lambda: _down_instance(host, p.name, token))  # fmt: skip
    return 127  # not reached


def _prebuilt_gone(pre: Prebuilt) -> None:
    """Remove a build ahead (unclaimed, or claimed by an `up` that then could not use it)."""
    if pre.inst is not None:
        _rollback(pre.host, pre.inst, pre.plan.ifname)
        os.close(pre.inst.fd)


def _routed_state(p: Plan) -> dict[str, Any]:
    """The state's record of a routed link: what `down` removes in mux (see routed.py)."""
    return {"link": "routed", "routed": [str(a) for a in p.routed]} if p.kind == "veth" else {}


def holds_unit(env: Mapping[str, str] = os.environ) -> bool:
    """True when this process is a Type=notify unit's main process (netmux@.service): then
    a command-less `netmux up` must stay, or the unit would end and tear the namespace down.
    The unit does not use RemainAfterExit=yes because then a command's (a VM's) clean exit
    would leave it "active (exited)" with nothing cleaned up."""
    return bool(env.get("NOTIFY_SOCKET") and env.get("INVOCATION_ID"))


def hold_unit(name: str, undo: Callable[[], None] | None = None) -> None:
    """Become `sleep infinity` until the unit stops (become.hold)."""
    sys.stdout.flush()
    become.handoff(become.hold(name), undo)


def _status_line(addrs: dict[str, list[str]], dns: list[str]) -> str:
    parts = []
    if addrs["global"]:
        parts.append("global " + " ".join(addrs["global"]))
    if addrs["ula"]:
        parts.append("ula " + " ".join(addrs["ula"]))
    if dns:
        parts.append("dns " + " ".join(dns))
    return "; ".join(parts)


# --- macvtap ------------------------------------------------------------------------------


def _open_tap(p: Plan, netns: str | int | None = None) -> int:
    """The macvtap's character device for QEMU (tap.open_tap); the fd is inheritable.
    `netns`: the instance's own namespace fd where there is one (`up`), else the name."""
    return tap.open_tap(p.name if netns is None else netns, p.ifname, f"workload {p.name}")


# --- becoming the workload ----------------------------------------------------------------


def exec_in(
    name: str,
    argv: list[str],
    user: pwd.struct_passwd | None = None,
    gid: int | None = None,
    pass_fds: tuple[int, ...] = (),
    undo: Callable[[], None] | None = None,
    drop_caps: tuple[int, ...] = (),
) -> None:
    """Become NAME's command (netmux/become.py): here, or from the launcher's client."""
    ex = become.Exec(name=name, argv=tuple(argv), env=become.user_env(user),
                     user=user.pw_name if user else None, gid=gid, pass_fds=pass_fds,
                     drop_caps=drop_caps)  # fmt: skip
    become.handoff(ex, undo)


# --- down -------------------------------------------------------------------------------


def _unlink_state(host: HostConfig, name: str, token: str | None = None) -> bool:
    """Remove NAME's state file; with a token only while it is that instance's."""
    if token is not None and (read_state(host, name) or {}).get("token") != token:
        return False
    try:
        state_path(host, name).unlink()
    except FileNotFoundError:
        return False
    return True


def stop_processes(netns: int, grace: float) -> list[int]:
    """End every process in the namespace: SIGTERM, `grace` seconds, then SIGKILL (again
    for any that forked meanwhile). The PIDs still inside afterwards (normally none).

    Processes are found by their /proc/PID/ns/net, not by a cgroup: a workload's command
    runs in whatever cgroup started it (a unit's, a shell's; cgroup v1 on some hosts), and
    the namespace is exactly what the workload is. Each is signalled through a pidfd that
    was checked to be in the namespace, so a PID reused meanwhile is never hit.
    """
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    for _ in range(10):
        pidfds = _signal_all(netns, sig)
        if not pidfds:
            return []
        _wait_exits(list(pidfds.values()), deadline)
        for pfd in pidfds.values():
            os.close(pfd)
        if sig == signal.SIGKILL:
            deadline = time.monotonic() + 1.0
        sig = signal.SIGKILL
    return nsutil.pids_in_netns(netns)


def _signal_all(netns: int, sig: int) -> dict[int, int]:
    """Send `sig` to every process in `netns`; {pid: pidfd} of those signalled."""
    target = nsutil.netns_id(netns)
    out: dict[int, int] = {}
    for pid in nsutil.pids_in_netns(netns):
        if pid == os.getpid():
            continue
        try:
            pfd = os.pidfd_open(pid)
        except OSError:
            continue  # already gone
        try:
            if nsutil.netns_id(f"/proc/{pid}/ns/net") != target:
                raise ProcessLookupError  # the PID was reused by another process
            signal.pidfd_send_signal(pfd, sig)
        except OSError:
            os.close(pfd)
            continue
        out[pid] = pfd
    return out


def _wait_exits(pidfds: list[int], deadline: float) -> None:
    """Until every pidfd is readable (its process ended) or the deadline."""
    poll = select.poll()
    for pfd in pidfds:
        poll.register(pfd, select.POLLIN)
    left = len(pidfds)
    while left:
        ms = int(max(0.0, deadline - time.monotonic()) * 1000)
        ready = poll.poll(ms)
        if not ready:
            return
        for pfd, _ in ready:
            poll.unregister(pfd)
            left -= 1


def _teardown(
    host: HostConfig, name: str, ifname: str, fd: int | None, token: str | None
) -> tuple[bool, list[str]]:
    """Remove processes, link, mux leftovers, the netns name and state, each step whatever
    the others did. `fd` is the namespace (None: no namespace to enter); with a `token`
    only that instance's name and state are removed. (anything was there, what is left).

    The link goes before the name (synchronous) so that a stable MAC can never clash
    with a namespace that is still being torn down (asynchronous)."""
    did = False
    left: list[str] = []

    def step(what: str, fn: Any) -> None:
        nonlocal did
        try:
            did |= bool(fn())
        except Exception as e:  # every step runs, whatever failed before
            journal.warning(f"workload {name}: could not remove {what}: {e}", workload=name)
            left.append(what)

    if fd is not None:
        procs: list[int] = []

        def processes() -> bool:
            before = nsutil.pids_in_netns(fd)
            procs.extend(stop_processes(fd, host.workload.stop_grace))
            return bool(before)

        step("its processes", processes)
        if procs:
            left.append("processes " + " ".join(map(str, procs)))

        def link() -> bool:
            with links.iproute(fd) as ipr:
                return links.delete_link(ipr, ifname)

        step(f"link {ifname}", link)

    def mux_leftover() -> bool:
        if not links.netns_exists(host.mux.netns):
            return False
        with links.iproute(host.mux.netns) as mipr:
            return links.delete_link(mipr, names.mux_link_name(name))

    step(f"link {names.mux_link_name(name)} in mux", mux_leftover)

    def routed_link() -> bool:
        st = read_state(host, name) or {}
        if st.get("link") != "routed" or (token is not None and st.get("token") != token):
            return False  # not routed, or another instance's now (its proxies are its own)
        addrs = tuple(ipaddress.IPv6Address(a) for a in st.get("routed") or ())
        return routed.detach(host, name, addrs)

    step("routed link's routes, proxy entries and filter in mux", routed_link)

    def resolv_conf() -> bool:
        other = links.netns_exists(name) and nsutil.netns_id(name) != nsutil.netns_id(fd or -1)
        if token is not None and other:
            return False  # the name is another instance's now, and so is its resolv.conf
        return resolv.remove(name)

    step(f"{resolv.path(name)}", resolv_conf)  # before the name: the state goes last

    def netns_name() -> bool:
        if token is not None and nsutil.netns_id(name) != nsutil.netns_id(fd or -1):
            return False  # the name is another instance's now
        return links.remove_netns(name)

    step(f"network namespace {nsutil.netns_path(name)}", netns_name)
    step(f"state {state_path(host, name)}", lambda: _unlink_state(host, name, token))

    def scraps() -> bool:
        for tmp in files.scraps(state_path(host, name)):  # a write killed half-way
            tmp.unlink(missing_ok=True)
        return False

    step("temporary files", scraps)
    return did, left


def _rollback(host: HostConfig, inst: Instance, ifname: str) -> None:
    """Undo one instance's build; never raises (what it could not remove is logged)."""
    try:
        _, left = _teardown(host, inst.name, ifname, inst.fd, inst.token)
        if left:
            journal.warning(f"workload {inst.name}: rollback left " + ", ".join(left))
    except BaseException as e:  # the original error matters more
        journal.warning(f"workload {inst.name}: rollback failed: {e}", workload=inst.name)


def _require_host_mounts(name: str, what: str) -> None:
    """A namespace is named by a mount under /run/netns: one made (or unmounted) in a unit
    with a mount namespace of its own (netmux@.service's sandbox) would exist (or stay)
    there only. The warm launcher works outside the unit; without it, say so."""
    if os.environ.get("INVOCATION_ID") and not nsutil.shares_init_mounts():
        raise StateError(
            f"workload {name}: cannot {what} its namespace from inside this unit's sandbox "
            "(a mount namespace of its own): the warm launcher does that; "
            "start it with `systemctl start netmux-launcher.socket`"
        )


def down(host: HostConfig, name: str) -> bool:
    """`netmux down NAME`: remove everything of NAME that netmux made, whatever its state.

    Idempotent. A namespace without netmux's mark is never touched. Every step is tried;
    StateError at the end names what could not be removed (a second `down` retries)."""
    names.check_name(name)
    if name == host.mux.netns:
        raise UsageError(f"{name!r} is the mux namespace, not a workload: use `netmux mux down`")
    _require_host_mounts(name, "remove")
    st = read_state(host, name)
    ifname = str((st or {}).get("ifname") or host.workload.ifname)
    path = nsutil.netns_path(name)
    fd: int | None = None
    foreign = False
    if nsutil.is_netns(path):
        fd = nsutil.open_netns(name)
        legacy = st is not None and "token" not in st  # made before netns were marked
        if _token(links.read_mark(fd)) is None and not legacy:
            os.close(fd)
            fd, foreign = None, True
    elif os.path.lexists(path) and st is None:
        foreign = True  # an empty mount point someone else's `ip netns add` left
    try:
        if foreign:
            _unlink_state(host, name)
            raise StateError(
                f"network namespace {path} was not made by netmux (no netmux mark on its "
                f"lo): not touching it"
            )
        phonebook.unpublish_workload(
            name, host.phonebook.socket
        )  # records go first, whoever still holds a lifeline
        did, left = _teardown(host, name, ifname, fd, None)
    finally:
        if fd is not None:
            os.close(fd)
    if did:
        journal.info(
            f"workload {name} down",
            message_id=journal.WORKLOAD_DOWN,
            workload=name,
            netns=name,
        )
    if left:
        raise StateError(f"workload {name}: down left " + ", ".join(left) + "; run it again")
    return did


def _down_instance(host: HostConfig, name: str, token: str) -> None:
    """Remove workload NAME if it is still the instance `token` (never a newer one)."""
    if _token(links.read_mark(name)) != token:
        _unlink_state(host, name, token)
        return
    with contextlib.suppress(NetmuxError):
        down(host, name)


# --- exec / run --------------------------------------------------------------------------


def require_up(host: HostConfig, name: str) -> None:
    names.check_name(name)
    if not links.netns_exists(name):
        raise StateError(f"workload {name!r} is not up (no /run/netns/{name})")


def run(
    host: HostConfig, wl: WorkloadConfig, cmd: tuple[str, ...], timeout: float | None = None
) -> int:
    """`netmux run NAME -- CMD`: up, run CMD as a child inside, down; CMD's exit status.

    SIGINT/SIGTERM/SIGHUP are forwarded to CMD; `down` runs however CMD ends.
    """
    if not cmd:
        raise UsageError("run: a command is needed: netmux run NAME -- CMD [ARG ...]")
    p = plan(host, wl, cmd)
    child: subprocess.Popen[bytes] | None = None
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    pending: list[int] = []

    def forward(signum: int, frame: object) -> None:
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        else:
            pending.append(signum)

    old = {s: signal.signal(s, forward) for s in forwarded}
    created = False  # only what this run built is removed (never a concurrent owner's)
    guard_fd, guard_pid = _guardian(host, p.name)
    try:
        up(host, wl, (), exec_cmd=False)
        created = True
        tap_fd = _open_tap(p) if p.kind == "macvtap" else None
        if pending:
            return 128 + pending[0]
        argv = tap.substitute(p.cmd, tap_fd, p.mac)

        why_r, why_w = os.pipe()  # what failed in `pre`: subprocess only says that it did
        why = ""

        def pre() -> None:
            try:
                nsutil.enter_netns(p.name)
                become.bind_resolv(p.name)
                become.drop_capabilities(p.drop_caps, p.name)
                become.drop_privileges(p.user, p.gid)
            except BaseException as e:
                os.write(why_w, str(e).encode()[:1000])
                raise
            for s in forwarded:
                signal.signal(s, signal.SIG_DFL)

        try:
            child = subprocess.Popen(
                argv,
                preexec_fn=pre,
                env=become.user_env(p.user),
                pass_fds=(tap_fd,) if tap_fd is not None else (),
                cwd=p.user.pw_dir if p.user and os.path.isdir(p.user.pw_dir) else None,
            )
        except subprocess.SubprocessError:
            os.set_blocking(why_r, False)
            with contextlib.suppress(BlockingIOError):
                why = os.read(why_r, 1000).decode(errors="replace")
            raise StateError(
                f"workload {p.name}: cannot start {argv[0]} in it: {why or 'unknown'}"
            ) from None
        except OSError as e:  # exec itself: not a program (ENOEXEC), no permission, ...
            raise UsageError(f"workload {p.name}: cannot run {argv[0]}: {e.strerror}") from None
        finally:
            os.close(why_r)
            os.close(why_w)
            if tap_fd is not None:
                os.close(tap_fd)
        while True:
            try:
                rc = child.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                child.kill()
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
        return rc if rc >= 0 else 128 - rc
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        try:
            if created:
                down(host, p.name)
        finally:
            os.close(guard_fd)  # the guardian sees EOF and finds nothing left of this run
            with contextlib.suppress(ChildProcessError):
                os.waitpid(guard_pid, 0)
            for s, h in old.items():
                signal.signal(s, h)


def _guardian(host: HostConfig, name: str) -> tuple[int, int]:
    """Fork a process that removes this run's workload (and so ends its processes) once
    this process is gone, however it ended: SIGKILL included. (pipe fd, guardian pid).

    It waits for EOF on a pipe only this process holds; the kernel closes it on any exit.
    It then removes NAME only if the state is still this process's (pid) and the
    namespace still carries that instance's token.
    """
    parent = os.getpid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the guardian, measured by the tests from outside
        code = 0
        try:
            os.close(w)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)  # the run forwards these; it goes last
            while os.read(r, 64):
                pass
            st = read_state(host, name) or {}
            token = st.get("token")
            if st.get("pid") == parent and isinstance(token, str):
                journal.info(f"workload {name}: its `netmux run` ended: removing it")
                _down_instance(host, name, token)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(r)
    return w, pid


# --- status -------------------------------------------------------------------------------


def down_all(host: HostConfig) -> None:
    """`down` for every workload netmux knows (`mux down --force`, `lab down --force`): each
    failure is logged, and those left are named in one StateError (mux stays for them)."""
    if links.netns_exists(host.mux.netns):
        mux.require_ours(host)  # before anything changes
    left = []
    for name in known(host):
        try:
            down(host, name)
        except NetmuxError as e:
            left.append(name)
            journal.warning(f"mux down: {e}", workload=name)
    if left:
        raise StateError(
            f"mux {host.mux.netns}: kept, workloads could not be removed: {', '.join(left)}"
        )


def statuses(host: HostConfig, names_: list[str]) -> list[dict[str, Any]]:
    """status() of many workloads: one /proc scan and one thread that visits every
    namespace in turn (`netmux ls` and `status` at hundreds of workloads)."""
    members = nsutil.pids_by_netns()
    ifnames = {n: str((read_state(host, n) or {}).get("ifname") or host.workload.ifname)
               for n in names_}  # fmt: skip
    live = [n for n in names_ if links.netns_exists(n)]

    def one(n: str) -> links.LinkState:
        with links.iproute() as ipr:  # the thread is in n's namespace now
            return links.link_state(ipr, ifnames[n])

    states = dict(zip(live, nsutil.run_in_each_netns(live, one), strict=True))
    return [status(host, n, members, states.get(n)) for n in names_]


def status(
    host: HostConfig,
    name: str,
    members: dict[tuple[int, int], list[int]] | None = None,
    link: links.LinkState | OSError | None = None,
) -> dict[str, Any]:
    """Live status of one workload: state, interface, MAC, addresses (global/ULA), the
    processes in it (`members`: nsutil.pids_by_netns() when listing many; `link`: its
    link's state read already, see statuses())."""
    names.check_name(name)
    st = read_state(host, name) or {}
    ifname = str(st.get("ifname") or host.workload.ifname)
    out: dict[str, Any] = {
        "name": name,
        "netns": name,
        "netns_path": str(nsutil.netns_path(name)),
        "ifname": ifname,
        "kind": st.get("kind", "process"),
        "link": st.get("link", "macvlan"),
        "processes": [],
        "mac": st.get("mac"),
        "pid": st.get("pid"),
        "user": st.get("user"),
        "dns": st.get("dns", []),
        "addresses": {"global": [], "ula": [], "link_local": []},
        "default_route": False,
    }
    if not links.netns_exists(name):
        out["state"] = "stale" if st else "absent"
        return out
    try:
        if isinstance(link, OSError):
            raise link
        if link is None:
            with links.iproute(name) as ipr:
                link = links.link_state(ipr, ifname)
    except OSError:
        out["state"] = "broken"
        return out
    ls = link
    out["processes"] = _processes(name, members)
    out["addresses"] = links.split_addresses(ls.addrs)
    out["default_route"] = ls.default_route
    out["mac"] = ls.mac or out["mac"]
    if ls.mac is None:
        out["state"] = "no-link"
    elif not st:
        out["state"] = "unmanaged"
    elif st.get("phase") == "building":
        pid = st.get("pid")
        out["state"] = "building" if isinstance(pid, int) and _alive(pid) else "half-built"
    elif not ls.up:
        out["state"] = "down"
    elif st.get("kind") == "vm" and st.get("command") and not _alive_pid(st):
        out["state"] = "exited"  # QEMU (the exec'd command) is gone; `down` cleans up
    elif st.get("kind") == "vm" or links.ready(ls, str(st.get("wait") or "global")):
        out["state"] = "up"
    else:
        out["state"] = "degraded"
    out["running"] = _alive_pid(st)
    if out["kind"] == "vm" and out["state"] == "up" and out["mac"]:
        out["guest"] = guest_addresses(host, name, str(out["mac"]))
    return out


def _processes(
    name: str, members: dict[tuple[int, int], list[int]] | None = None
) -> list[dict[str, Any]]:
    """{pid, command} of every process in NAME's namespace (what `down` will stop)."""
    out = []
    ns = nsutil.netns_id(name)
    pids = (members if members is not None else nsutil.pids_by_netns()).get(ns, []) if ns else []
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        out.append({"pid": pid, "command": comm})
    return out


def guest_addresses(host: HostConfig, name: str, mac: str) -> list[str]:
    """A running VM's addresses as netmux sees them from outside: those phonebookd learned
    from the guest's neighbour discovery, and mux's neighbour entries with the guest's MAC
    (whatever mux has talked to)."""
    found = set(phonebook.published_addresses(name))
    if links.netns_exists(host.mux.netns):
        with contextlib.suppress(OSError), links.iproute(host.mux.netns) as mipr:
            found |= {str(a) for a in links.neighbours_with_mac(mipr, host.mux.gateway, mac)}
    return sorted(found, key=ipaddress.ip_address)


def _alive_pid(st: Mapping[str, Any]) -> bool:
    """Whether the process recorded by `up` (after exec: the command itself) still runs."""
    pid = st.get("pid")
    return bool(isinstance(pid, int) and _alive(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- CLI handlers -------------------------------------------------------------------------


def _workload_from_args(args: argparse.Namespace, host: HostConfig) -> WorkloadConfig:
    overrides: dict[str, object] = {
        s.key: getattr(args, s.key, None) for s in config.WORKLOAD_FLAGS
    }
    wl = config.load_workload(host, args.name, env=os.environ, overrides=overrides)
    unit_user = systemd_user()
    if not wl.user and unit_user:
        overrides["user"] = unit_user
        wl = config.load_workload(host, args.name, env=os.environ, overrides=overrides)
    return wl


def systemd_user(env: Mapping[str, str] = os.environ) -> str | None:
    """The unit's User= when `netmux up` runs as root under systemd (ExecStart=!...): systemd
    still passes $USER, and the workload should run as that user. Lowest precedence: the
    workload file, NETMUX_USER and --user win. Outside systemd $USER is ignored."""
    user = env.get("USER")
    if not env.get("INVOCATION_ID") or not user or user == "root" or os.geteuid() != 0:
        return None
    return user


def cmd_up(args: argparse.Namespace, host: HostConfig) -> int:
    wl = _workload_from_args(args, host)
    cmd = tuple(args.cmd) or wl.command
    rc = up(host, wl, cmd)
    if not cmd:
        _print_status(_status_of_up(read_state(host, wl.name) or {}, wl.name))
        if holds_unit():
            token = str((read_state(host, wl.name) or {}).get("token", ""))
            hold_unit(wl.name, undo=lambda: _down_instance(host, wl.name, token))
    return rc


def _status_of_up(st: Mapping[str, Any], name: str) -> dict[str, Any]:
    """What `up` just built and checked, from its state (no second look at the kernel):
    the status `up` prints."""
    return {
        "name": name,
        "state": "up",
        "kind": st.get("kind", "process"),
        "netns_path": st.get("netns_path", str(nsutil.netns_path(name))),
        "ifname": st.get("ifname"),
        "link": st.get("link", "macvlan"),
        "mac": st.get("mac"),
        "addresses": st.get("addresses", {"global": [], "ula": []}),
        "dns": st.get("dns", []),
    }


def cmd_down(args: argparse.Namespace, host: HostConfig) -> int:
    """One name: as `down`. Several (one interpreter for hundreds, docs/benchmarks.md): each
    is tried; each failure is one line, and the exit status is the first failure's."""
    more = list(getattr(args, "more", None) or [])
    if not more:
        down(host, args.name)
        return 0
    rc = 0
    for name in [args.name, *more]:
        try:
            down(host, name)
        except NetmuxError as e:
            print(f"netmux down: {e}", file=sys.stderr)
            rc = rc or e.exit_code
    return rc


def cmd_exec(args: argparse.Namespace, host: HostConfig) -> int:
    require_up(host, args.name)
    if not args.cmd:
        raise UsageError("exec: a command is needed: netmux exec NAME -- CMD [ARG ...]")
    user = lookup_user(args.user, "exec --user") if getattr(args, "user", None) else None
    argv = list(args.cmd)
    fds: tuple[int, ...] = ()
    st = read_state(host, args.name) or {}
    if st.get("kind") == "vm" and any(TAPFD in a or MAC in a for a in argv):
        # QEMU joining a VM workload from a unit of its own: the same tap and MAC as `up`.
        ifname = str(st.get("ifname") or host.workload.ifname)
        fd = tap.open_tap(args.name, ifname, f"workload {args.name}")
        argv, fds = tap.substitute(argv, fd, str(st.get("mac", ""))), (fd,)
    exec_in(args.name, argv, user, None, pass_fds=fds)
    return 127  # not reached


def cmd_run(args: argparse.Namespace, host: HostConfig) -> int:
    wl = _workload_from_args(args, host)
    return run(host, wl, tuple(args.cmd) or wl.command)


def cmd_ls(args: argparse.Namespace, host: HostConfig) -> int:
    rows = statuses(host, known(host))
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    print(f"{'NAME':15} {'STATE':9} {'KIND':7} {'MAC':17} ADDRESSES")
    for r in rows:
        addrs = " ".join(r["addresses"]["global"] + r["addresses"]["ula"] + r.get("guest", []))
        print(f"{r['name']:15} {r['state']:9} {r['kind']:7} {r['mac'] or '-':17} {addrs or '-'}")
    return 0


def cmd_status(args: argparse.Namespace, host: HostConfig) -> int:
    if args.name:
        names.check_name(args.name)
        rows = [status(host, args.name)]
        if rows[0]["state"] == "absent":
            if args.json:
                print(json.dumps(rows[0], indent=2, sort_keys=True))
            else:
                print(f"{args.name}: not up", file=sys.stderr)
            return 3
    else:
        from . import renumber

        rows = statuses(host, known(host))
        prefixes = renumber.prefix_report(host)
        if args.json:
            print(json.dumps({"prefixes": prefixes, "workloads": rows}, indent=2, sort_keys=True))
            return 0
        sys.stdout.write(renumber.prefix_text(prefixes))
    if args.json:
        print(json.dumps(rows[0], indent=2, sort_keys=True))
        return 0
    for r in rows:
        _print_status(r)
    return 0


def _print_status(r: dict[str, Any]) -> None:
    print(f"{r['name']}: {r['state']} ({r['kind']}, netns {r['netns_path']})")
    print(f"  interface {r['ifname']} ({r.get('link', 'macvlan')}) mac {r['mac'] or '-'}")
    for key in ("global", "ula"):
        for a in r["addresses"][key]:
            print(f"  {key:6} {a}")
    for a in r.get("guest", []):
        print(f"  guest  {a}")
    if r.get("dns"):
        print("  dns    " + " ".join(r["dns"]))
    for proc in r.get("processes", []):
        print(f"  process {proc['pid']} {proc['command']}")
