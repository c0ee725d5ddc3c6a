"""Small helpers for the benches: timing, statistics, a text table, the JSON results file.

Benches measure; they never assert budgets (tests do not time things). Each writes
bench/results/NAME.json (gitignored) and prints a table that can be pasted into
bench/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netmux import config
from netmux.config import HostConfig

RESULTS = Path(__file__).resolve().parent / "results"


def now() -> float:
    return time.perf_counter()


def summary(samples: Sequence[float]) -> dict[str, float | int]:
    """n, median, p95, min, max, mean (seconds in, seconds out)."""
    xs = sorted(samples)
    if not xs:
        return {"n": 0}
    p95 = xs[min(len(xs) - 1, max(0, round(0.95 * len(xs)) - 1))]
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "p95": p95,
        "min": xs[0],
        "max": xs[-1],
        "mean": statistics.fmean(xs),
    }


def ms(v: float | int | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f}"


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain-text table (left-aligned first column, right-aligned others)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def load_config(base: Path, text: str) -> HostConfig:
    """Write a bench's own netmux.toml under `base` (its namespaces and paths) and load it."""
    base.mkdir(parents=True, exist_ok=True)
    path = base / "netmux.toml"
    path.write_text(text)
    return config.load_host(path)


def compile_checkout() -> None:
    """Byte-compile netmux as the package does at install (dh_python3, pip), so that a
    command's start-up is measured as installed: with PYTHONDONTWRITEBYTECODE set (as in
    some CI shells), every start would otherwise compile each module anew (~30 ms)."""
    import compileall

    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "netmux"), quiet=1)
