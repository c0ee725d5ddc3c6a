"""The `netmux` command. Thin: parses arguments, loads config, calls the modules that act.

Each subcommand names a handler "module:function" that is imported only when the command
runs, so `netmux render` does not pay for pyroute2 and a feature's module owns its handler.
A handler takes (args, host_config) and returns an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, config, journal
from .errors import NetmuxError

Handler = Callable[[argparse.Namespace, config.HostConfig], int]

PENDING = "(not implemented yet: planned in issue {})"


def _handler(spec: str) -> Handler:
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(f"netmux.{mod}"), fn)  # type: ignore[no-any-return]


def _pending(issue: int) -> Handler:
    def run(args: argparse.Namespace, cfg: config.HostConfig) -> int:
        print(f"netmux {args.command}: " + PENDING.format(issue), file=sys.stderr)
        return 1

    return run


def _add(sub: Any, name: str, help: str, handler: str | int, **kw: Any) -> argparse.ArgumentParser:
    """Add a subcommand; handler is "module:function", or an issue number if still pending."""
    if isinstance(handler, int):
        help = f"{help} {PENDING.format(handler)}"
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, **kw)
    p.set_defaults(handler=handler)
    return p


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netmux",
        description="A network namespace and a real, routable IPv6 address for every workload.",
    )
    parser.add_argument("--version", action="version", version=f"netmux {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"host configuration (default: ${config.CONFIG_ENV} or {config.DEFAULT_CONFIG})",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _add(sub, "config", "print the effective host configuration", "cli:cmd_config")
    _json_flag(p)

    p = _add(sub, "mux", "create or remove the mux namespace and its links", "mux:cmd_mux")
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--force", action="store_true", help="down: take every workload down first")
    p.add_argument(
        "--watch",
        action="store_true",
        help="after up: adopt hot-plugged uplink NICs until SIGTERM (READY=1 under systemd)",
    )

    p = _add(sub, "nic", "adopt an uplink NIC into mux (used by the udev rule)", "mux:cmd_nic")
    p.add_argument("action", choices=["adopt"])
    p.add_argument("ifname")

    p = _add(sub, "up", "create workload NAME; then exec CMD in it, or return", "workload:cmd_up")
    p.add_argument("name")
    p.add_argument("--port", action="append", metavar="PROTO/PORT", help="e.g. tcp/80")
    p.add_argument("--vm", action="store_true", help="a macvtap for QEMU instead of a macvlan")
    p.add_argument("--user", help="run CMD as this user")
    p.add_argument("--address", action="append", metavar="ADDR/LEN", help="static address")
    p.add_argument("--timeout", type=float, help="seconds to wait for a usable address")
    p.add_argument(
        "--wait", choices=["global", "ula", "none"], help="what to wait for (workload.wait)"
    )
    p.add_argument(
        "--link", choices=["macvlan", "routed"], help="the workload's link (workload.link)"
    )
    p.add_argument("cmd", nargs="*", help="-- CMD [ARG ...]")

    p = _add(sub, "down", "remove workload NAME (idempotent)", "workload:cmd_down")
    p.add_argument("name")

    p = _add(sub, "exec", "run CMD inside workload NAME's namespace", "workload:cmd_exec")
    p.add_argument("name")
    p.add_argument("--user", help="run CMD as this user")
    p.add_argument("cmd", nargs="*", help="-- CMD [ARG ...]")

    p = _add(
        sub, "run", "short-lived workload: up, run CMD, down; CMD's exit status", "workload:cmd_run"
    )
    p.add_argument("name")
    p.add_argument("--port", action="append", metavar="PROTO/PORT")
    p.add_argument("--user")
    p.add_argument("--vm", action="store_true", help="a macvtap for QEMU instead of a macvlan")
    p.add_argument("--address", action="append", metavar="ADDR/LEN", help="static address")
    p.add_argument("--timeout", type=float, help="seconds to wait for a usable address")
    p.add_argument(
        "--wait", choices=["global", "ula", "none"], help="what to wait for (workload.wait)"
    )
    p.add_argument(
        "--link", choices=["macvlan", "routed"], help="the workload's link (workload.link)"
    )
    p.add_argument("cmd", nargs="*", help="-- CMD [ARG ...]")

    p = _add(sub, "ls", "list workloads", "workload:cmd_ls")
    _json_flag(p)

    p = _add(sub, "status", "addresses, DNS names and state of workloads", "workload:cmd_status")
    p.add_argument("name", nargs="?")
    _json_flag(p)

    p = _add(
        sub, "render", "print a daemon configuration rendered from the config", "render:cmd_render"
    )
    p.add_argument("what", choices=["radvd", "dhcpcd", "tayga", "unbound", "nft", "router-rules"])
    p.add_argument("--output", metavar="FILE", help="write FILE (atomically) instead of stdout")
    p.add_argument(
        "--uplink",
        action="append",
        metavar="IFNAME",
        help="dhcpcd: an uplink name (default: links in mux matching mux.uplinks)",
    )
    style = p.add_mutually_exclusive_group()  # router-rules (render/router_rules.py)
    for s in ("nft", "ip6tables", "routeros"):
        style.add_argument(f"--{s}", dest="router_style", action="store_const", const=s,
                           help=f"router-rules: {s} syntax")  # fmt: skip
    p.add_argument("--prefix", action="append", help="router-rules: a statically bound prefix")
    p.add_argument("--match", metavar="VALUE/MASK", help="router-rules: 2000:0:0:1::/e000:0:0:ff::")

    p = _add(sub, "deny", "the source-prefix denylist in mux", "denylist:cmd_deny")
    p.add_argument("action", choices=["add", "del", "list", "count", "log"])
    p.add_argument("prefix", nargs="?", help="e.g. 2001:db8:bad::/48")
    p.add_argument(
        "--timeout", type=config.seconds_arg, metavar="SECONDS", help="add: expire after"
    )
    p.add_argument("--watch", action="store_true", help="log: every deny.log_interval s")
    _json_flag(p)

    p = _add(sub, "stats", "per-workload traffic counters", "stats:cmd_stats")
    _json_flag(p)
    p.add_argument("--prometheus", metavar="FILE", help="also write a node-exporter textfile")
    p.add_argument(
        "--interval", type=config.seconds_or_zero_arg, default=1.0, help="seconds between samples"
    )

    p = _add(sub, "top", "per-workload traffic, refreshing", "stats:cmd_top")
    p.add_argument(
        "--interval", type=config.seconds_arg, default=2.0, help="seconds between refreshes"
    )
    p.add_argument("--count", type=int, default=0, help="stop after N refreshes (0: never)")

    p = _add(sub, "ipmux", "run CMD in a new user+net namespace with a device from ipmuxd",
             "ipmuxd:cmd_ipmux")  # fmt: skip
    p.add_argument("name", help="the device's name (stable secret and MAC derive from it)")
    p.add_argument(
        "--kind",
        choices=["routed", "macvlan", "macvtap", "ipvlan"],
        default="routed",
        help="routed (default): a veth of its own to mux; macvlan: on the shared segment",
    )
    p.add_argument("--ifname", help="its name inside the namespace (default: workload.ifname)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG ...]")

    p = _add(
        sub, "doctor", "check the host and say what is wrong and how to fix it", "doctor:cmd_doctor"
    )
    _json_flag(p)

    p = _add(sub, "nat64", "tayga's TUN, routes and NAT in mux (netmux-tayga.service)",
             "uplink:cmd_nat64")  # fmt: skip
    p.add_argument("action", choices=["setup", "teardown"])
    p.add_argument("conf", nargs="?", help="setup: the rendered tayga.conf")

    p = _add(
        sub, "lab", "a simulated home router upstream of mux, for demos and tests", "lab:cmd_lab"
    )
    p.add_argument("action", choices=["up", "down", "renumber"])
    p.add_argument(
        "prefix", nargs="?", help="renumber: the /64 to delegate instead (default: the next one)"
    )
    p.add_argument(
        "--force", action="store_true", help="down: take every workload down, then mux too"
    )
    return parser


def cmd_config(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    if args.json:
        print(json.dumps(to_jsonable(cfg), indent=2, sort_keys=True))
    else:
        print(f"# {cfg.source}")
        for section, values in to_jsonable(cfg).items():
            if isinstance(values, dict):
                print(f"[{section}]")
                for k, v in values.items():
                    print(f"{k} = {json.dumps(v)}")
    return 0


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, paths and addresses to plain JSON values."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


# Commands whose CMD follows "--": options may come anywhere before it (argparse's
# REMAINDER would swallow `up NAME --user u -- CMD`'s options into CMD).
_DASHDASH_CMD = frozenset({"up", "exec", "run"})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["renumber-hook"]:
        # dhcpcd's hook (render/dhcpcd.py) runs the netmux that rendered it: not for people.
        from . import renumber

        return renumber.main(argv[1:])
    parser = build_parser()
    if "--" in argv:
        i = argv.index("--")
        args = parser.parse_args(argv[:i])
        if args.command in _DASHDASH_CMD:
            args.cmd = [*args.cmd, *argv[i + 1 :]]
        else:
            args = parser.parse_args(argv)
    else:
        args = parser.parse_args(argv)
    journal.set_quiet(args.quiet)
    if getattr(args, "cmd", None) and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    try:
        cfg = config.load_host(config.config_path(args.config) if args.config else None)
        note = config.defaults_note(cfg)
        if note:
            journal.info(note)
        handler = args.handler
        fn = _pending(handler) if isinstance(handler, int) else _handler(handler)
        return fn(args, cfg)
    except NetmuxError as e:
        if args.debug:
            traceback.print_exc()
        print(f"netmux {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
