"""The Debian package and a booted Debian root for it: shared by the .deb tests.

The .deb is built by debian/make-package (the `make package` path: dpkg-buildpackage -b,
then lintian, which fails on any error or warning), once per test session, or taken from
$NETMUX_DEB. The root is made with mmdebstrap (variant apt plus the package's
dependencies and what the tests use, ~25 s from Debian's mirror) once per session as a
tarball (or taken from $NETMUX_DEB_ROOT_TAR, a tarball made with the same packages) and
unpacked once per test module, under a tmp dir named for this run; RootBox boots it with
systemd-nspawn -D ROOT (its own cgroup with the run prefix, private network,
PR_SET_PDEATHSIG), driven through nsenter like tests/sysbox.py does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import RUN
from tests.sysbox import SysBox

REPO = Path(__file__).resolve().parent.parent
RELEASES = ("bookworm", "trixie")  # Debian 12 and 13: both must build, install and run it


def _host_release() -> str:
    with open("/etc/os-release") as f:
        fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    return codename if codename in RELEASES else "bookworm"


def _available(package: str) -> bool:
    """Whether this machine's apt knows `package` (its release is the booted root's)."""
    try:
        r = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True)
    except OSError:  # no apt here: the .deb tests fail on their own tools first
        return False
    return r.returncode == 0 and "Package:" in r.stdout


# The root that is booted is this machine's own release (the .deb built here targets it);
# the other release gets a build, lintian, install and purge in a chroot of its own.
SUITE = os.environ.get("NETMUX_DEB_SUITE", _host_release())
OTHER = next(r for r in RELEASES if r != SUITE)
# The package's Depends (what apt would pull in), the recipes' daemons (knot, unbound,
# tayga where the release has it) and what the tests themselves use (dig, curl, ss).
ROOT_PACKAGES = ",".join(
    [
        "systemd,dbus,iproute2,radvd,dhcpcd-base,nftables,adduser,python3,python3-dbus-next",
        "python3-dnspython,python3-nftables,python3-pyudev,python3-systemd,procps",
        "bind9-dnsutils,ndisc6,knot,unbound,curl",
        *(["tayga"] if _available("tayga") else []),
    ]
)
# What may differ after install + purge: logs, dpkg's and apt's own books, systemd state.
VOLATILE = (
    "var/log/",
    "var/lib/dpkg/",
    "var/lib/apt/",
    "var/cache/",
    "var/lib/systemd/",
    "var/tmp/",
    "tmp/",
    "run/",
    "etc/group-",
    "etc/gshadow-",
    # Debian's own knot.service, unbound.service and (Debian 13) tayga.service ran at boot,
    # before the recipes disabled them; enabling them again after the purge rewrites their
    # SysV links (netmux has no init scripts).
    "var/lib/knot/",
    "var/lib/unbound/",
    "var/spool/tayga/",
    "etc/rc",
)

_made: dict[str, Path] = {}  # once per session: "deb", "tar"


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `make deps` installs APT_PACKAGING")


def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb: $NETMUX_DEB, else built (and lintian-checked) by debian/make-package."""
    if os.environ.get("NETMUX_DEB"):
        return Path(os.environ["NETMUX_DEB"])
    if "deb" not in _made:
        need("dpkg-buildpackage", "lintian")
        dist = tmp_path_factory.mktemp(f"{RUN}dist")
        r = subprocess.run(
            ["bash", str(REPO / "debian" / "make-package"), str(dist)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, f"make-package failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        (_made["deb"],) = dist.glob("netmux_*_all.deb")
    return _made["deb"]


def root_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The minimal root as a tarball: $NETMUX_DEB_ROOT_TAR, else made once by mmdebstrap."""
    if os.environ.get("NETMUX_DEB_ROOT_TAR"):
        return Path(os.environ["NETMUX_DEB_ROOT_TAR"])
    if "tar" not in _made:
        need("mmdebstrap")
        tar = tmp_path_factory.mktemp(f"{RUN}roottar") / "root.tar"
        r = subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=apt", "--mode=root",
             f"--include={ROOT_PACKAGES}", SUITE, str(tar)],
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert r.returncode == 0, f"mmdebstrap failed:\n{r.stderr[-4000:]}"
        _made["tar"] = tar
    return _made["tar"]


def unpack_root(tar: Path, root: Path, hostname: str) -> None:
    """The tarball unpacked at `root`, with a machine-id (not a first boot) and a hostname."""
    need("systemd-nspawn")
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tar)], check=True)
    (root / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")
    (root / "etc" / "hostname").write_text(hostname + "\n")
    system = root / "etc" / "systemd" / "system"
    for unit in ("console-getty.service", "getty.target", "systemd-logind.service"):
        with contextlib.suppress(FileExistsError):
            (system / unit).symlink_to("/dev/null")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(f"{RUN}deb")


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_deb(tmp_path_factory)


@pytest.fixture(scope="module")
def root(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A minimal Debian root with the package's dependencies, one per module."""
    root = workdir / "root"
    unpack_root(root_tarball(tmp_path_factory), root, "debroot")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # ~300 MB: not kept with pytest's tmp dirs


class RootBox(SysBox):
    """tests.sysbox.SysBox, booting a Debian root directory instead of a volatile /."""

    def __init__(self, name: str, workdir: Path, root: Path) -> None:
        super().__init__(name, workdir)
        self.root = root

    def root_args(self) -> list[str]:
        return ["-D", str(self.root)]

    def start(self, veth_extra: Sequence[tuple[str, str]] = (), timeout: float = 30.0) -> None:
        super().start(veth_extra, timeout)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")


def files(root: Path) -> dict[str, str]:
    """Every path in the root (not the API filesystems) -> a short fingerprint."""
    out: dict[str, str] = {}
    skip = {"proc", "sys", "dev", "run", "tmp"}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            key = os.path.relpath(p, root)
            out[key] = f"{st.st_mode:o} {st.st_uid}:{st.st_gid}"
    return out
