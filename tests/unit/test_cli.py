"""The command line: one-line errors with exit 2, --json output, every command's handler
and help."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def netmux(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netmux.cli", *args], capture_output=True,
                          text=True, env=env)  # fmt: skip


def test_config_json(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_text('[mux]\nnetns = "m1"\n')
    r = netmux("--config", str(p), "config", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mux"]["netns"] == "m1"


def test_bad_config_is_one_line_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_text('[mux]\ngateway = "x y"\n')
    r = netmux("--config", str(p), "config")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"{p}: mux.gateway: 'x y'" in r.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_text('[mux]\ngateway = "x y"\n')
    r = netmux("--config", str(p), "--debug", "config")
    assert r.returncode == 2 and "Traceback" in r.stderr


# Every command and the options it must keep (more may be added; none may go unnoticed).
COMMANDS: dict[str, set[str]] = {
    "config": {"--json"},
    "mux": {"action", "--force", "--watch"},
    "nic": {"action", "ifname"},
    "up": {"name", "--port", "--vm", "--user", "--address", "--timeout", "--wait", "cmd"},
    "down": {"name"},
    "exec": {"name", "--user", "cmd"},
    "launcher": {"--socket"},
    "run": {"name", "--port", "--vm", "--user", "--address", "--timeout", "--wait", "cmd"},
    "ls": {"--json"},
    "status": {"name", "--json"},
    "render": {
        "what",
        "--output",
        "--uplink",
        "--nft",
        "--ip6tables",
        "--routeros",
        "--prefix",
        "--match",
    },
    "deny": {"action", "prefix", "--timeout", "--watch", "--json"},
    "stats": {"--json", "--prometheus", "--interval"},
    "top": {"--interval", "--count"},
    "ipmux": {"name", "--kind", "--ifname", "cmd"},
    "doctor": {"--json"},
    "nat64": {"action", "conf", "--is"},
    "lab": {"action", "prefix", "--force", "--hosts"},
    "host": {"action", "name", "--address", "--knot-socket", "--no-reload", "--json"},
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from netmux import cli

    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_help_lists_every_command_with_its_help() -> None:
    r = netmux("--help")
    assert r.returncode == 0
    subs = _subparsers()
    assert set(subs) == set(COMMANDS)
    for name, p in subs.items():
        first = (p.description or "").split()[:3]
        assert first, f"{name} has no help"
        words = r"\s+".join(map(re.escape, first))
        line = rf"^\s+{re.escape(name)}\s+{words}"
        assert re.search(line, r.stdout, re.M), f"`netmux --help` does not list {name}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_resolves_its_handler_and_lists_its_options(name: str) -> None:
    import importlib

    p = _subparsers()[name]
    handler = p.get_default("handler")
    assert callable(handler) and list(inspect.signature(handler).parameters) == ["args", "cfg"]
    # A forwarding handler's lazy import names a real cmd_* of a real module (cli's own
    # cmd_* handlers import what they use).
    tree = ast.parse(textwrap.dedent(inspect.getsource(handler)))
    for node in ast.walk(tree) if handler.__name__.startswith("_") else ():
        if isinstance(node, ast.ImportFrom):
            mod = importlib.import_module("." * node.level + (node.module or ""), "netmux")
            for a in node.names:
                target = getattr(mod, a.name)
                assert callable(target) and a.name.startswith("cmd_"), a.name
    shown = netmux(name, "--help")
    assert shown.returncode == 0, shown.stderr
    positional = {a.dest: a for a in p._actions if not a.option_strings}
    for opt in COMMANDS[name]:
        shows = opt
        if not opt.startswith("-"):  # a positional shows as its choices or its name
            assert opt in positional, f"`netmux {name}` has no argument {opt}"
            choices = positional[opt].choices
            shows = "{" + ",".join(map(str, choices)) + "}" if choices else opt
        assert re.search(rf"(^|[\s\[,]){re.escape(shows)}(\b|$|\s|\])", shown.stdout, re.M), (
            f"`netmux {name} --help` does not list {opt}"
        )


def test_non_utf8_config_is_one_line_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_bytes(b'[dns]\nhostname = "\xe9"\n')
    r = netmux("--config", str(p), "config")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "UTF-8" in r.stderr


def test_empty_config_is_said_once_at_info_level(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_text("")
    r = netmux("--config", str(p), "config")
    assert r.returncode == 0
    assert r.stderr.count("every setting is its default") == 1, r.stderr
    r = netmux("--config", str(p), "-q", "config")
    assert r.stderr == ""  # info level: -q hides it


def test_nan_timeout_is_one_line_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "n.toml"
    p.write_text('[mux]\nnetns = "m1"\n')
    r = netmux("--config", str(p), "up", "w1", "--timeout", "nan")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "timeout" in r.stderr and "finite" in r.stderr
