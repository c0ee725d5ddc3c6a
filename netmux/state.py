"""The workloads' records: RUN_DIR/workloads/NAME.json, written by workload.py.

A module of its own, below workload.py and what workload.py itself imports: mux.py (which
workloads hang off it) and routed.py (the routed workloads to re-address, their addresses
written back) read and write them here, not through workload.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import files, names
from .config import HostConfig


def state_dir(host: HostConfig) -> Path:
    """RUN_DIR/workloads: one NAME.json per workload netmux knows."""
    return host.paths.run_dir / "workloads"


def state_path(host: HostConfig, name: str) -> Path:
    return state_dir(host) / f"{name}.json"


def read_state(host: HostConfig, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads(state_path(host, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_state(host: HostConfig, name: str, data: dict[str, Any]) -> None:
    files.write_atomic(state_path(host, name), json.dumps(data, indent=1, sort_keys=True) + "\n")


def known(host: HostConfig) -> list[str]:
    """The workloads with a record, valid names only, sorted."""
    d = state_dir(host)
    try:
        return sorted(p.stem for p in d.glob("*.json") if names.is_valid_name(p.stem))
    except FileNotFoundError:
        return []
