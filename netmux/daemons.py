"""What the installed daemons accept: probed once per process, by asking the real binary.

Renderers are pure and take these feature records as arguments; this module is the one
place that runs the binaries to find out. A probe feeds the daemon a minimal config using
the feature and checks that it is accepted — behaviour, not version numbers, decides
(Debian 12 ships radvd 2.19, unbound 1.17.1, tayga 0.9.2, dhcpcd 9.4.1; Debian 13 newer).
A missing binary reads as "feature absent", so rendering still works on a build machine.

Known thresholds, for the record: radvd 2.20 added `nat64prefix` (PREF64, RFC 8781);
unbound 1.19 added `do-nat64`; tayga 0.9.2 refuses `240.0.0.0/4` ("reserved address"),
later releases accept class E pools.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .render.radvd import RadvdFeatures

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class UnboundFeatures:
    do_nat64: bool = False  # `do-nat64: yes` (unbound >= 1.19)


@dataclass(frozen=True)
class TaygaFeatures:
    class_e_pool: bool = False  # accepts 240.0.0.0/4 as pool and ipv4-addr


@dataclass(frozen=True)
class DhcpcdFeatures:
    version: tuple[int, ...] = ()


def parse_version(text: str) -> tuple[int, ...]:
    """The first dotted number in a version banner: 'dhcpcd 9.4.1' -> (9, 4, 1)."""
    m = re.search(r"(\d+(?:\.\d+)+)", text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def _accepts(argv: list[str], config_text: str, suffix: str = ".conf") -> bool:
    """Run argv + [config path]; True when the binary exits 0 on that config."""
    if not shutil.which(argv[0]):
        return False
    with tempfile.TemporaryDirectory(prefix="netmux-probe-") as d:
        path = Path(d) / f"probe{suffix}"
        path.write_text(config_text.replace("@DIR@", d))
        try:
            r = subprocess.run(
                [*argv, str(path)],
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                check=False,
                cwd=d,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0


@functools.cache
def radvd() -> RadvdFeatures:
    conf = "interface gw0 {\n  AdvSendAdvert on;\n  nat64prefix 64:ff9b::/96 {\n  };\n};\n"
    return RadvdFeatures(pref64=_accepts(["radvd", "-m", "none", "-c", "-C"], conf))


@functools.cache
def unbound() -> UnboundFeatures:
    conf = 'server:\n  chroot: ""\n  username: ""\n  do-nat64: yes\n'
    return UnboundFeatures(do_nat64=_accepts(["unbound-checkconf"], conf))


@functools.cache
def tayga() -> TaygaFeatures:
    """tayga has no check mode: `--mktun` parses the config and creates the TUN, so the
    probe runs in a throwaway network namespace (root only; otherwise assume the old rule).
    """
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return TaygaFeatures()
    conf = (
        "tun-device nat64probe\nipv4-addr 240.0.0.1\ndynamic-pool 240.0.0.0/4\n"
        "prefix 2001:db8:64::/96\ndata-dir @DIR@\n"
    )
    ok = _accepts(["unshare", "--net", "tayga", "--mktun", "-c"], conf)
    return TaygaFeatures(class_e_pool=ok)


@functools.cache
def dhcpcd() -> DhcpcdFeatures:
    if not shutil.which("dhcpcd"):
        return DhcpcdFeatures()
    try:
        r = subprocess.run(
            ["dhcpcd", "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return DhcpcdFeatures()
    return DhcpcdFeatures(version=parse_version(r.stdout.splitlines()[0] if r.stdout else ""))
