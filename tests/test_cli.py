"""The command line: one-line errors with exit 2, --json output, pending commands say so."""

from __future__ import annotations

import json
import subprocess
import sys
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


def test_help_lists_commands() -> None:
    r = netmux("--help")
    assert r.returncode == 0
    for cmd in ("up", "down", "run", "status", "render", "deny", "doctor", "lab"):
        assert cmd in r.stdout


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
