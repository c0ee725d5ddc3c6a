"""pyroute2 without its package `__init__`: what netmux's hot path uses, and nothing else.

`import pyroute2` runs a package `__init__` that imports every module the library has
(ndb, ipdb, conntrack, nl80211, ipvs, plan9, unittest.mock through ipmock, ...): ~370
modules, 100-150 ms, on every `netmux up` and `down`. netmux uses IPRoute, NetlinkError
and the netns mount code. The first of those names asked of this module registers `pyroute2`
as a bare package (its `__path__`, not its `__init__`) and imports just its submodule,
which is about half the cost; the start path itself uses rtnl.py instead
(docs/benchmarks.md, "The launcher's own cost").

Anything else in the same process may still `from pyroute2 import NDB`: the first
attribute the bare package lacks runs the real `__init__` once, in place (it then has
every public name, as if imported normally). If `pyroute2` was imported before this
module, nothing is changed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any


def _bare_package() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:
        raise ImportError("pyroute2 is not installed", name="pyroute2")
    pkg = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:  # a submodule (`from pyroute2 import netns`): just that one
            return importlib.import_module(f"pyroute2.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"pyroute2.{name}":
                raise
        # A public name of the full package: run the real __init__ now, once.
        pkg.__dict__.pop("__getattr__", None)
        loader.exec_module(pkg)
        return pkg.__dict__[name] if name in pkg.__dict__ else _missing(pkg, name)

    pkg.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["pyroute2"] = pkg


def _missing(pkg: ModuleType, name: str) -> Any:
    raise AttributeError(f"module {pkg.__name__!r} has no attribute {name!r}")


def __getattr__(name: str) -> Any:
    """IPRoute, NetlinkError, netns: imported on first use (`pr2.NetlinkError` in an
    `except` clause is looked up only when an exception arrives there)."""
    if name not in NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _bare_package()
    if name == "netns":
        from pyroute2 import netns as value
    elif name == "IPRoute":
        from pyroute2.iproute.linux import IPRoute as value
    else:
        from pyroute2.netlink.exceptions import NetlinkError as value
    globals()[name] = value
    return value


NAMES = ("IPRoute", "NetlinkError", "netns")
