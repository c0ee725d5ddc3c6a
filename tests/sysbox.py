"""A real systemd, booted as PID 1 in a throwaway container, for the `system` test tier.

The machine's PID 1 is not systemd, so tests that need `systemctl`, journald, D-Bus and
unit semantics boot one (docs/platform.md, "Testing with a real systemd"):

    systemd-nspawn --volatile=yes -D / --bind=TMP/etc:/etc --private-network -b

- `--volatile=yes` gives a tmpfs root over the host's /usr; /etc is a small directory the
  test prepares (a fresh machine-id, so systemd does not run first-boot preset-all and
  start every service installed on the host).
- Readiness comes from a NOTIFY_SOCKET this module owns: nspawn relays
  X_NSPAWN_LEADER_PID= and READY=1 (~0.3 s).
- nspawn runs in its own cgroup named with the run prefix (the leak check sees it) and
  with PR_SET_PDEATHSIG, so a killed test run powers the container off.
- The checkout is bind-mounted at the same path, so the venv's shebangs and the editable
  install work inside for commands the tests run. Units get @BINDIR@ = /opt/netmux/bin:
  small launchers over read-only binds of the checkout and the venv's site-packages, so
  sandboxed units (PrivateTmp=, ProtectHome=) still see netmux when the checkout lives
  under /tmp, /root or /home, as a CI clone may.

Inside the container names need no run prefix (its netns and mounts are private); host
side objects (the cgroup, veth ends) carry it.

Use `boot(...)` as a context manager, or `module_box(...)` to get a module-scoped fixture
(one boot per test module keeps the tier inside its time budget).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUN

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
# Where units find netmux inside the container (see _launchers).
UNIT_BIN = Path("/opt/netmux/bin")
_OPT_SRC, _OPT_SITE = "/opt/netmux/src", "/opt/netmux/site"
ENTRY_POINTS = {
    "netmux": "netmux.__main__",
    "phonebookd": "netmux.phonebook.service",
    "ipmuxd": "netmux.ipmuxd",
}
UNITS_DIR = REPO / "units"
CGROUP_HIERARCHIES = ("systemd", "unified")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_PDEATHSIG = 1
# Files a booted /usr needs from /etc; everything else starts empty.
ETC_COPY = (
    "passwd",
    "group",
    "shadow",
    "gshadow",
    "nsswitch.conf",
    "ld.so.cache",
    "hosts",
    "alternatives",
    "iproute2",
)
# Units of the host's /usr that only cost boot time in a test container.
MASK = ("console-getty.service", "getty.target", "systemd-logind.service")

_boots = iter(range(1, 1000))


def substitute(text: str, bindir: Path | str) -> str:
    """Fill the placeholders units carry (see docs/systemd.md): @BINDIR@ only."""
    return text.replace("@BINDIR@", str(bindir))


def unit_files(units_dir: Path = UNITS_DIR) -> list[Path]:
    """The project's unit files (not the examples)."""
    suffixes = {".service", ".target", ".socket", ".path", ".timer"}
    return sorted(p for p in units_dir.iterdir() if p.is_file() and p.suffix in suffixes)


class SysBox:
    """One booted container. `run` executes a command inside it (as root, clean env)."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        config: str | None = None,
        binds: Sequence[tuple[Path | str, str]] = (),
    ) -> None:
        self.name = name  # host-side: machine name and cgroup, carries the run prefix
        self.workdir = workdir
        self.etc = workdir / "etc"
        self.config = config
        self.leader = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.console = workdir / "console.log"
        self.host_links: list[str] = []
        self.binds = list(binds)  # extra (host path, container path), read-only

    # --- lifecycle -------------------------------------------------------------------------

    def prepare_etc(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        for name in ETC_COPY:
            src = Path("/etc") / name
            if src.is_dir():
                shutil.copytree(src, self.etc / name, symlinks=True, dirs_exist_ok=True)
            elif src.exists():
                shutil.copy2(src, self.etc / name)
        (self.etc / "os-release").symlink_to("../usr/lib/os-release")
        (self.etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
        (self.etc / "hostname").write_text("sysbox\n")
        system = self.etc / "systemd" / "system"
        system.mkdir(parents=True)
        for unit in MASK:
            (system / unit).symlink_to("/dev/null")
        if self.config is not None:
            (self.etc / "netmux").mkdir()
            (self.etc / "netmux" / "netmux.toml").write_text(self.config)

    def root_args(self) -> list[str]:
        """What nspawn boots: the host's /usr over a volatile root, with the test's /etc."""
        self.prepare_etc()
        args = ["-D", "/", "--volatile=yes", f"--bind={self.etc}:/etc", f"--bind={REPO}:{REPO}"]
        return args + [f"--bind-ro={src}:{dst}" for src, dst in self._launchers()]

    def start(self, veth_extra: Sequence[tuple[str, str]] = (), timeout: float = 20.0) -> None:
        root_args = self.root_args()
        sock_path = self.workdir / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(sock_path))
        cgroups = [Path("/sys/fs/cgroup") / h / self.name for h in CGROUP_HIERARCHIES]
        cgroups = [cg for cg in cgroups if cg.parent.is_dir()]
        for cg in cgroups:
            cg.mkdir()

        def in_own_cgroup() -> None:  # runs in the child between fork and exec
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            for cg in cgroups:
                (cg / "cgroup.procs").write_text(str(os.getpid()))

        argv = [
            "systemd-nspawn", "--quiet", "--notify-ready=yes", "--keep-unit", "--register=no",
            "-M", self.name, "--console=read-only", "--resolv-conf=off", "--timezone=off",
            "--link-journal=no", "--private-network", *root_args,
        ]  # fmt: skip
        argv += [f"--bind-ro={src}:{dst}" for src, dst in self.binds]
        for host_if, ct_if in veth_extra:
            argv.append(f"--network-veth-extra={host_if}:{ct_if}")
            self.host_links.append(host_if)
        argv += ["-b", "systemd.firstboot=off"]
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path))
        with open(self.console, "wb") as console:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                preexec_fn=in_own_cgroup,
            )
        try:
            self._wait_ready(sock, timeout)
        except BaseException:
            self.stop()
            raise
        finally:
            sock.close()
            sock_path.unlink()

    def _launchers(self) -> list[tuple[Path, str]]:
        """Launchers for UNIT_BIN and the binds they need (host path, container path)."""
        bindir = self.workdir / "opt-bin"
        bindir.mkdir(exist_ok=True)
        for name, module in ENTRY_POINTS.items():
            script = bindir / name
            # `netmux` starts without site, as the .deb's (debian/netmux.command) does.
            nosite = name == "netmux"
            script.write_text(
                ("#!/usr/bin/python3 -S\n" if nosite else "#!/usr/bin/python3\n") + "import sys\n"
                f"sys.path[0:0] = [{_OPT_SRC!r}, {_OPT_SITE!r}]\n"
                + ('sys.path.append("/usr/lib/python3/dist-packages")\n' if nosite else "")
                + f"from {module} import main\n"
                "sys.exit(main())\n"
            )
            script.chmod(0o755)
        site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
        return [(bindir, str(UNIT_BIN)), (REPO, _OPT_SRC), (site, _OPT_SITE)]

    def _wait_ready(self, sock: socket.socket, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ready = False
        while not (ready and self.leader):
            left = deadline - time.monotonic()
            assert self.proc is not None
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"container {self.name} did not boot: {self.console_tail()}")
            sock.settimeout(min(left, 0.5))
            try:
                data = sock.recv(4096).decode()
            except TimeoutError:
                continue
            for line in data.splitlines():
                if line.startswith("X_NSPAWN_LEADER_PID="):
                    self.leader = int(line.partition("=")[2])
                elif line == "READY=1":
                    ready = True

    def console_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Power off (nspawn turns SIGTERM into an orderly shutdown), then remove cgroups."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        for host_if in self.host_links:
            if Path(f"/sys/class/net/{host_if}").exists():
                subprocess.run(["ip", "link", "del", host_if], check=False)
        for h in CGROUP_HIERARCHIES:
            _rmtree_cgroup(Path("/sys/fs/cgroup") / h / self.name)

    # --- inside ---------------------------------------------------------------------------

    def argv(self, *cmd: str, env: dict[str, str] | None = None) -> list[str]:
        """The host command line that runs `cmd` inside the container."""
        envs = [f"PATH={PATH}", "LANG=C.UTF-8", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=cat"]
        envs += [f"{k}={v}" for k, v in (env or {}).items()]
        return ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *envs, *cmd]

    def run(
        self,
        *cmd: str,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            self.argv(*cmd, env=env),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"in {self.name}: {' '.join(cmd)} exited {r.returncode}\n"
                f"stdout: {r.stdout}\nstderr: {r.stderr}"
            )
        return r

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, **kw)

    def systemctl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, **kw)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show -p ...` as a dict."""
        out = self.systemctl("show", unit, *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """`journalctl -o json ARGS` as records."""
        out = self.run("journalctl", "--no-pager", "-o", "json", *args, check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def path(self, inside: str) -> Path:
        """A path inside the container, seen from the host (for reading and writing)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str) -> None:
        p = self.path(inside)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    @property
    def bus_address(self) -> str:
        """The container's system bus, for busctl --address / dbus-next from the host."""
        return f"unix:path=/proc/{self.leader}/root/run/dbus/system_bus_socket"

    def wait_for(self, pred: Callable[[], object], timeout: float = 10.0) -> object:
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {pred}")
            time.sleep(0.05)

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def install_units(self, units: Sequence[Path] | None = None, reload: bool = True) -> None:
        """Copy the project's units into /etc/systemd/system, @BINDIR@ -> UNIT_BIN.

        Installing all of them (units=None) also installs the D-Bus policy (dbus/*.conf),
        as `make install` does, and has dbus-daemon reload it.
        """
        system = self.etc / "systemd" / "system"
        for unit in units if units is not None else unit_files():
            (system / unit.name).write_text(substitute(unit.read_text(), UNIT_BIN))
        if units is None:
            self.install_dbus_policy(sorted((REPO / "dbus").glob("*.conf")))
        if reload:
            self.daemon_reload()

    def install_dbus_policy(self, files: Sequence[Path]) -> None:
        if not files:
            return
        policy = self.etc / "dbus-1" / "system.d"
        policy.mkdir(parents=True, exist_ok=True)
        for f in files:
            (policy / f.name).write_text(substitute(f.read_text(), UNIT_BIN))
        self.systemctl("reload", "dbus.service")

    def add_dropin(self, unit: str, name: str, text: str, reload: bool = True) -> None:
        d = self.etc / "systemd" / "system" / f"{unit}.d"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(substitute(text, UNIT_BIN))
        if reload:
            self.daemon_reload()

    def move_link_in(self, host_if: str, name: str) -> None:
        """Move a host link (named with the run prefix) into the container as `name`."""
        subprocess.run(["ip", "link", "set", host_if, "netns", str(self.leader)], check=True)
        self.run("ip", "link", "set", host_if, "name", name)


def _rmtree_cgroup(top: Path) -> None:
    """Remove a cgroup and the children the container's systemd made, deepest first."""
    if not top.is_dir():
        return
    dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in [*dirs, top]:
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)  # processes still exiting


@contextlib.contextmanager
def boot(
    config: str | None = None,
    veth_extra: Sequence[tuple[str, str]] = (),
    units: bool = False,
    binds: Sequence[tuple[Path | str, str]] = (),
) -> Iterator[SysBox]:
    """Boot a container; yields a SysBox; powers it off and cleans up even on failure."""
    name = f"{RUN}sbx{next(_boots)}"
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        box = SysBox(name, Path(tmp), config, binds)
        box.start(veth_extra)
        try:
            if units:
                box.install_units()
            yield box
        finally:
            box.stop()


def module_box(
    config: str | None = None,
    veth_extra: Callable[[], Sequence[tuple[str, str]]] | None = None,
    units: bool = False,
) -> Any:
    """A module-scoped fixture booting one container for the whole test module."""

    @pytest.fixture(scope="module")
    def box() -> Iterator[SysBox]:
        with boot(config, veth_extra() if veth_extra else (), units) as b:
            yield b

    return box
