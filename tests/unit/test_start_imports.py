"""The start path's import structure (docs/benchmarks.md, "The launcher's own cost"):
`netmux up`/`down` import no pyroute2 (rtnl.py), no asyncio and no D-Bus library, and
pyroute2 where used elsewhere comes without its package `__init__` (pr2.py).
Checked in a fresh interpreter through sys.modules, never by timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = (
    "pyroute2",  # rtnl.py does the start path's netlink; pyroute2 only for other commands
    "asyncio",
    "pyroute2.ndb",
    "pyroute2.ndb.main",
    "pyroute2.ipdb",
    "pyroute2.conntrack",
    "pyroute2.netlink.nl80211",
    "pyroute2.ipvs",
    "pyroute2.plan9",
    "dbus_next",
)


def _modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_up_path_imports_no_heavy_module() -> None:
    mods = _modules("import netmux.cli, netmux.workload, netmux.firewall, netmux.mux")
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


def test_pr2_imports_only_what_is_asked() -> None:
    mods = _modules("from netmux import pr2\nassert pr2.IPRoute and pr2.NetlinkError")
    assert "pyroute2.iproute.linux" in mods
    assert not mods & set(HEAVY[2:]), sorted(mods & set(HEAVY[2:]))


def test_full_pyroute2_still_importable_after_the_bare_package() -> None:
    """Another module of the same process may want the whole library: it gets it."""
    mods = _modules(
        "import netmux.links\n"
        "from pyroute2 import NDB, IPRoute\n"
        "import pyroute2\n"
        "from pyroute2.iproute.linux import IPRoute as I2\n"
        "assert IPRoute is I2 and pyroute2.__version__ != 'unknown'\n"
        "from pyroute2 import netns\n"
        "assert netns.attach\n"
    )
    assert "pyroute2.ndb.main" in mods


def test_pyroute2_imported_first_is_left_alone() -> None:
    mods = _modules(
        "import pyroute2\nimport netmux.pr2\nassert netmux.pr2.IPRoute is pyroute2.IPRoute\n"
    )
    assert "pyroute2.ndb.main" in mods


def test_the_launchers_client_loads_almost_nothing() -> None:
    """The `netmux` command as a client of the warm launcher (netmux/launch.py) pays only
    the interpreter: none of these (~20 ms together) may creep into its imports."""
    out = subprocess.run(
        [sys.executable, "-S", "-c", "import sys\nsys.path[:0] = sys.argv[1:]\n"
         "import netmux.__main__, netmux.launch\nprint(' '.join(sorted(sys.modules)))",
         *sys.path],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    mods = set(out.split())
    heavy = {"typing", "json", "socket", "re", "dataclasses", "enum", "pathlib", "ctypes",
             "netmux.cli", "netmux.config", "netmux.sd", "netmux.become"}  # fmt: skip
    assert "netmux.launch" in mods and not mods & heavy, sorted(mods & heavy)
