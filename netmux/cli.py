"""The `netmux` command. Thin: parses arguments, loads config, calls the modules that act.

Each subcommand's handler is a small function here that imports the feature's module only
when the command runs (so `netmux render` does not pay for pyroute2) and calls its
`cmd_*`, which the module owns: real references that mypy checks. A handler takes
(args, host_config) and returns an exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, config, journal, launch
from .errors import NetmuxError

Handler = Callable[[argparse.Namespace, config.HostConfig], int]


# --- handlers: each imports its module only when its command runs -------------------------


def _deny(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .denylist import cmd_deny

    return cmd_deny(args, cfg)


def _doctor(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .doctor import cmd_doctor

    return cmd_doctor(args, cfg)


def _host(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .hosts import cmd_host

    return cmd_host(args, cfg)


def _ipmux(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .ipmuxd import cmd_ipmux

    return cmd_ipmux(args, cfg)


def _lab(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .lab import cmd_lab
    from .lab.multihost import cmd_lab_hosts

    rc = cmd_lab_hosts(args, cfg)  # several hosts (--hosts N, off/on), else the single host
    return cmd_lab(args, cfg) if rc is None else rc


def _mux(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .muxctl import cmd_mux

    return cmd_mux(args, cfg)


def _nic(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .mux import cmd_nic

    return cmd_nic(args, cfg)


def _render(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .render.command import cmd_render

    return cmd_render(args, cfg)


def _stats(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .stats import cmd_stats

    return cmd_stats(args, cfg)


def _top(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .stats import cmd_top

    return cmd_top(args, cfg)


def _nat64(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .nat64 import cmd_nat64

    return cmd_nat64(args, cfg)


def _down(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .workload import cmd_down

    return cmd_down(args, cfg)


def _exec(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .workload import cmd_exec

    return cmd_exec(args, cfg)


def _ls(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .workload import cmd_ls

    return cmd_ls(args, cfg)


def _run(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .workload import cmd_run

    return cmd_run(args, cfg)


def _status(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .workload import cmd_status

    return cmd_status(args, cfg)


def _up(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    from .workload import cmd_up

    return cmd_up(args, cfg)


def _add(sub: Any, name: str, help: str, handler: Handler, **kw: Any) -> argparse.ArgumentParser:
    """Add a subcommand and the handler its parsed arguments run with."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, **kw)
    p.set_defaults(handler=handler)
    return p


def _workload_args(p: argparse.ArgumentParser) -> None:
    """NAME, an option per workload setting that has one (config.WORKLOAD_SETTINGS: the
    value lands in args.KEY), and -- CMD: `up` and `run` take the same."""
    p.add_argument("name")
    for s in config.WORKLOAD_FLAGS:
        p.add_argument(s.flag, dest=s.key, **s.cli)
    p.add_argument("cmd", nargs="*", help="-- CMD [ARG ...]")


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


_parser: argparse.ArgumentParser | None = None


def parser() -> argparse.ArgumentParser:
    """The parser, built once per process (~10 ms: argparse asks gettext for every help
    string); the warm launcher builds it before it forks (netmux/launcher.py)."""
    global _parser
    if _parser is None:
        _parser = build_parser()
    return _parser


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

    p = _add(sub, "config", "print the effective host configuration", cmd_config)
    _json_flag(p)

    p = _add(sub, "mux", "create or remove the mux namespace and its links", _mux)
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--force", action="store_true", help="down: take every workload down first")
    p.add_argument(
        "--watch",
        action="store_true",
        help="after up: adopt hot-plugged uplink NICs until SIGTERM (READY=1 under systemd)",
    )

    p = _add(sub, "nic", "adopt an uplink NIC into mux (used by the udev rule)", _nic)
    p.add_argument("action", choices=["adopt"])
    p.add_argument("ifname")

    p = _add(sub, "up", "create workload NAME; then exec CMD in it, or return", _up)
    _workload_args(p)

    p = _add(sub, "down", "remove workload NAME (idempotent)", _down)
    p.add_argument("name")
    p.add_argument("more", nargs="*", metavar="NAME", help="more workloads, one after another")

    p = _add(sub, "exec", "run CMD inside workload NAME's namespace", _exec)
    p.add_argument("name")
    p.add_argument("--user", help="run CMD as this user")
    p.add_argument("cmd", nargs="*", help="-- CMD [ARG ...]")

    p = _add(sub, "run", "short-lived workload: up, run CMD, down; CMD's exit status", _run)
    _workload_args(p)

    p = _add(sub, "ls", "list workloads", _ls)
    _json_flag(p)

    p = _add(sub, "status", "addresses, DNS names and state of workloads", _status)
    p.add_argument("name", nargs="?")
    _json_flag(p)

    p = _add(
        sub,
        "render",
        "print a daemon configuration rendered from the config",
        _render,
    )
    p.add_argument(
        "what", choices=["radvd", "dhcpcd", "tayga", "jool", "unbound", "nft", "router-rules"]
    )
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

    p = _add(sub, "deny", "the source-prefix denylist in mux", _deny)
    p.add_argument("action", choices=["add", "del", "list", "count", "log"])
    p.add_argument("prefix", nargs="?", help="e.g. 2001:db8:bad::/48")
    p.add_argument(
        "--timeout", type=config.seconds_arg, metavar="SECONDS", help="add: expire after"
    )
    p.add_argument("--watch", action="store_true", help="log: every deny.log_interval s")
    _json_flag(p)

    p = _add(sub, "stats", "per-workload traffic counters", _stats)
    _json_flag(p)
    p.add_argument("--prometheus", metavar="FILE", help="also write a node-exporter textfile")
    p.add_argument(
        "--interval", type=config.seconds_or_zero_arg, default=1.0, help="seconds between samples"
    )

    p = _add(sub, "top", "per-workload traffic, refreshing", _top)
    p.add_argument(
        "--interval", type=config.seconds_arg, default=2.0, help="seconds between refreshes"
    )
    p.add_argument("--count", type=int, default=0, help="stop after N refreshes (0: never)")

    p = _add(sub, "ipmux", "run CMD in a new user+net namespace with a device from ipmuxd",
             _ipmux)  # fmt: skip
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
        sub, "launcher", "serve up/down/ls/status warm (netmux-launcher.service)", cmd_launcher
    )
    p.add_argument("--socket", default=launch.socket_path(),
                   help="where to listen unless systemd passes the socket")  # fmt: skip
    p.add_argument("--no-prebuild", dest="prebuild", action="store_false",
                   help="do not build a netmux@ unit's workload while systemd sets the unit "
                        "up (netmux/unitwatch.py); its `netmux up` builds it")  # fmt: skip

    p = _add(sub, "doctor", "check the host and say what is wrong and how to fix it", _doctor)
    _json_flag(p)

    p = _add(
        sub,
        "nat64",
        "NAT64 in mux: which engine; tayga's TUN, routes and NAT; Jool's instance "
        "(netmux-tayga.service, netmux-jool.service)",
        _nat64,
    )
    p.add_argument("action", choices=["setup", "teardown", "engine", "jool-up", "jool-down"])
    p.add_argument(
        "conf", nargs="?", help="setup: the rendered tayga.conf; jool-up: where to write jool.json"
    )
    p.add_argument(
        "--is",
        dest="is_",
        choices=["tayga", "jool"],
        help="engine: exit 0 if this is the engine, 1 if not (ExecCondition=)",
    )

    p = _add(sub, "lab", "a simulated home router upstream of mux, for demos and tests", _lab)
    p.add_argument("action", choices=["up", "down", "renumber", "off", "on"])
    p.add_argument(
        "prefix",
        nargs="?",
        help="renumber: the /64 to delegate instead (default: the next one); "
        "off/on: the number of the host to switch off or on (2 or 3)",
    )
    p.add_argument(
        "--hosts",
        type=int,
        default=1,
        help="up: that many netmux hosts (2 or 3) behind the lab router, host 1 the primary "
        "of docs/hosts.md, a secondary Knot in a vps namespace, an internet namespace",
    )
    p.add_argument(
        "--force", action="store_true", help="down: take every workload down, then mux too"
    )
    p = _add(sub, "host", "more than one netmux host: the primary serves every host's zone",
             _host)  # fmt: skip
    p.add_argument("action", choices=["add", "remove", "join", "leave", "list", "expire"])
    p.add_argument("name", nargs="?", help="add/remove: the host's name; join: the join file")
    p.add_argument("--address", help="add: the primary's address the host sends updates to")
    p.add_argument("--knot-socket", default="/var/lib/netmux/knot/run/knot.sock",
                   help="add/remove: the primary's knotc socket (reloaded)")  # fmt: skip
    p.add_argument("--no-reload", action="store_true", help="add/remove: do not reload Knot")
    _json_flag(p)
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


def cmd_launcher(args: argparse.Namespace, cfg: config.HostConfig) -> int:
    """The warm launcher (netmux/launcher.py): its workers run this CLI's `main`."""
    from .launcher import serve

    return serve(args.socket, main, parser, prebuild=args.prebuild)  # parser: once, pre-fork


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
    p = parser()
    if "--" in argv:
        i = argv.index("--")
        args = p.parse_args(argv[:i])
        if args.command in _DASHDASH_CMD:
            args.cmd = [*args.cmd, *argv[i + 1 :]]
        else:
            args = p.parse_args(argv)
    else:
        args = p.parse_args(argv)
    journal.set_quiet(args.quiet)
    if getattr(args, "cmd", None) and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    try:
        cfg = config.load_host(config.config_path(args.config) if args.config else None)
        note = config.defaults_note(cfg)
        if note:
            journal.info(note)
        handler: Handler = args.handler
        return handler(args, cfg)
    except NetmuxError as e:
        if args.debug:
            traceback.print_exc()
        print(f"netmux {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
