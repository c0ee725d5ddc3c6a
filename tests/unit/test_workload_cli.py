"""The CLI surface of the lifecycle commands: CMD after '--', options anywhere before it."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import pytest

from netmux import cli, config, workload

pytestmark = pytest.mark.unit


@pytest.fixture
def captured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> tuple[list[argparse.Namespace], Path]:
    seen: list[argparse.Namespace] = []

    def fake(args: argparse.Namespace, host: config.HostConfig) -> int:
        seen.append(args)
        return 0

    for fn in ("cmd_up", "cmd_run", "cmd_exec"):
        monkeypatch.setattr(workload, fn, fake)
    cfg = tmp_path / "netmux.toml"
    cfg.write_text("")
    return seen, cfg


@pytest.mark.parametrize(
    ("argv", "name", "user", "cmd"),
    [
        (["up", "web", "--user", "www", "--", "ping", "-c1", "--", "x"], "web", "www",
         ["ping", "-c1", "--", "x"]),
        (["up", "--user", "www", "web", "--", "ls", "--user"], "web", "www", ["ls", "--user"]),
        (["up", "web"], "web", None, []),
        (["up", "web", "sleep", "1"], "web", None, ["sleep", "1"]),
        (["run", "job", "--port", "tcp/80", "--", "true"], "job", None, ["true"]),
        (["exec", "web", "--user", "nobody", "--", "id", "-u"], "web", "nobody", ["id", "-u"]),
    ],
)  # fmt: skip
def test_cmd_after_dashdash(
    captured: tuple[list[argparse.Namespace], Path],
    argv: list[str],
    name: str,
    user: str | None,
    cmd: list[str],
) -> None:
    seen, cfg = captured
    assert cli.main(["--config", str(cfg), *argv]) == 0
    (args,) = seen
    assert args.name == name and args.user == user and args.cmd == cmd


def test_wait_option(captured: tuple[list[argparse.Namespace], Path]) -> None:
    seen, cfg = captured
    assert cli.main(["--config", str(cfg), "up", "web", "--wait", "none"]) == 0
    assert seen[0].wait == "none"


def test_handlers_are_wired() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, handler in {
        "mux": "muxctl:cmd_mux", "nic": "mux:cmd_nic", "up": "workload:cmd_up",
        "down": "workload:cmd_down", "exec": "workload:cmd_exec", "run": "workload:cmd_run",
        "ls": "workload:cmd_ls", "status": "workload:cmd_status",
    }.items():  # fmt: skip
        mod, _, fn = handler.partition(":")
        source = inspect.getsource(sub.choices[command].get_default("handler"))
        assert f"from .{mod} import {fn}\n" in source and f"return {fn}(args, cfg)" in source
