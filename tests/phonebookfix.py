"""A phonebook stack for tests and bench: knotd + tinydns + a private D-Bus + phonebookd.

Everything runs in namespaces and directories of this run: a "dns" netns holds knotd
(::1@53, RFC 2136 with TSIG), tinydns (127.0.0.1@53, data.cdb) and phonebookd (so it can
reach both over loopback); a private dbus-daemon (the real policy file included, with the
group made configurable) listens on a socket in a world-searchable temporary directory,
so that callers of other uids (nobody) can try it. phonebookd's NOTIFY_SOCKET is a fake
systemd kept here: it records READY=1 and keeps the fd store (FDSTORE/FDSTOREREMOVE), so a
restart can be handed the stored fds exactly as systemd would (LISTEN_FDS/LISTEN_FDNAMES).
"""

from __future__ import annotations

import array
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
POLICY = REPO / "dbus" / "org.netmux.Phonebook1.conf"
HOST = "box"
DOMAIN = "example.org"
PUBLIC = f"{HOST}.{DOMAIN}"
SETTLE_TIMEOUT = 2.5

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <!-- Debian's system.conf defaults: anyone may connect, method calls denied unless allowed -->
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus" />
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy user="root">
    <allow send_destination="*"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"""


class FakeSystemd:
    """The NOTIFY_SOCKET end: READY=1 and the fd store, as systemd keeps it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.store: list[tuple[str, int]] = []
        self.messages: list[str] = []
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(253 * 4))
            except TimeoutError:
                continue
            except OSError:
                return
            fds: list[int] = []
            for level, typ, raw in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(raw[: len(raw) - len(raw) % 4])
                    fds += list(a)
            text = data.decode()
            fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            with self.lock:
                self.messages.append(text)
                if fields.get("FDSTORE") == "1":
                    for fd in fds:
                        os.set_inheritable(fd, False)
                        self.store.append((fields.get("FDNAME", "stored"), fd))
                    fds = []
                if fields.get("FDSTOREREMOVE") == "1":
                    name = fields.get("FDNAME", "")
                    for n, fd in [x for x in self.store if x[0] == name]:
                        os.close(fd)
                        self.store.remove((n, fd))
            for fd in fds:
                os.close(fd)
            if fields.get("READY") == "1":
                self.ready.set()

    def names(self) -> list[str]:
        with self.lock:
            return [n for n, _ in self.store]

    def close(self) -> None:
        self.stop = True
        self.sock.close()
        self.thread.join()
        with self.lock:
            for _, fd in self.store:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.store.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def nsrun(ns: str, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        ["nsenter", f"--net=/run/netns/{ns}", *argv], text=True, capture_output=True, **kw
    )


class Stack:
    """knotd + tinydns + dbus-daemon + phonebookd, for one test."""

    def __init__(
        self,
        dns_ns: str,
        group: str = "daemon",
        sinks: tuple[str, ...] = ("tinydns", "rfc2136"),
        tinydns: bool = True,
        sighup_pidfile: str = "",
        extra: dict[str, str] | None = None,
        listen: tuple[str, ...] = ("::1",),
    ) -> None:
        """`extra`: more TOML lines per section ("mux", "paths", "phonebook", "ipmux", or a
        section of its own); `listen`: Knot's addresses in `dns_ns` (("::",) to serve the
        zones to other namespaces too)."""
        self.ns = dns_ns
        self.listen = listen
        self.dir = Path(tempfile.mkdtemp(prefix="netmux-pb-"))
        self.dir.chmod(0o755)  # the bus socket is used by nobody too
        self.group = group
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pbd: subprocess.Popen[bytes] | None = None
        self.systemd: FakeSystemd | None = None
        self.bus_sock = self.dir / "bus"
        self.bus = f"unix:path={self.bus_sock}"
        self.tinydns_dir = self.dir / "tinydns"
        self.publish_sock = self.dir / "publish"
        self.config = self.dir / "netmux.toml"
        self.knot_dir = self.dir / "knot"
        if not shutil.which("tinydns-data"):  # optional package: knot alone then
            sinks = tuple(s for s in sinks if s != "tinydns")
        sink_list = ", ".join(f'"{s}"' for s in sinks)
        more = {k: v.rstrip("\n") + "\n" for k, v in (extra or {}).items()}
        self.config.write_text(
            f'[dns]\nhostname = "{HOST}"\ndomain = "{DOMAIN}"\nttl = 5\n'
            f"[phonebook]\nsinks = [{sink_list}]\n"
            f'socket = "{self.publish_sock}"\ntinydns_dir = "{self.tinydns_dir}"\n'
            f'server = "::1"\nserver_port = 53\ntsig_key = "{self.knot_dir}/phonebook.key"\n'
            f'reverse = ["2001:db8:1::/64"]\ngroup = "{group}"\nwatch_units = false\n'
            f'sighup_pidfile = "{sighup_pidfile}"\n{more.pop("phonebook", "")}'
            f'[paths]\nstate_dir = "{self.dir}/state"\nrun_dir = "{self.dir}/run"\n'
            f'workloads_dir = "{self.dir}/workloads"\n{more.pop("paths", "")}'
            # how long a Publish waits for the sinks (the start timeout)
            f"[workload]\ntimeout = {SETTLE_TIMEOUT}\n{more.pop('workload', '')}"
            + "".join(f"[{section}]\n{lines}" for section, lines in more.items())
        )
        self.want_tinydns = tinydns and shutil.which("tinydns") is not None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- processes ----------------------------------------------------------------------

    def _spawn(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        p: subprocess.Popen[bytes] = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def _start(self) -> None:
        from netmux.config import parse_host
        from netmux.phonebook import knot
        from netmux.phonebook.records import Zones

        zones = Zones.from_config(parse_host(self.config.read_text()))
        knot.write_all(knot.KnotSite(zones, self.knot_dir, list(self.listen), 53))
        self.knot_log = open(self.dir / "knot.log", "wb")  # noqa: SIM115
        self._spawn(
            ["nsenter", f"--net=/run/netns/{self.ns}", "knotd", "-c", f"{self.knot_dir}/knot.conf"],
            stdout=self.knot_log,
            stderr=subprocess.STDOUT,
        )
        policy = self.dir / "policy.conf"
        policy.write_text(POLICY.read_text().replace('group="netmux"', f'group="{self.group}"'))
        (self.dir / "bus.conf").write_text(BUS_CONF.format(sock=self.bus_sock, policy=policy))
        self._spawn(
            ["dbus-daemon", "--nofork", "--nosyslog", f"--config-file={self.dir}/bus.conf"],
            stdout=self.knot_log,
            stderr=subprocess.STDOUT,
        )
        if self.want_tinydns:
            self.tinydns_dir.mkdir()
            self._spawn(
                ["nsenter", f"--net=/run/netns/{self.ns}", "tinydns"],
                env={
                    "PATH": os.environ["PATH"],
                    "ROOT": str(self.tinydns_dir),
                    "IP": "127.0.0.1",
                    "UID": "0",
                    "GID": "0",
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 5
        while not self.bus_sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("dbus-daemon did not start")
            time.sleep(0.01)
        self.start_phonebookd()
        # knotd answers once its zones are loaded
        while "NOERROR" not in self.dig(PUBLIC, "SOA", short=False):
            if time.monotonic() > deadline:
                raise RuntimeError("knotd did not start: " + (self.dir / "knot.log").read_text())
            time.sleep(0.02)

    def start_phonebookd(self, stored: list[tuple[str, int]] | None = None) -> None:
        """Start phonebookd; `stored` fds are passed as systemd passes its fd store."""
        self.systemd = self.systemd or FakeSystemd(self.dir / "notify")
        self.systemd.ready.clear()
        env = dict(os.environ, NOTIFY_SOCKET=str(self.systemd.path))
        env.pop("LISTEN_FDS", None)
        argv = [
            str(VENV_BIN / "python"),
            "-m",
            "netmux.phonebook.service",
            "--config",
            str(self.config),
            "--bus-address",
            self.bus,
        ]
        pass_fds: tuple[int, ...] = ()
        if stored:
            # systemd puts them at 3, 4, ... and sets LISTEN_PID to the service's own PID.
            pass_fds = tuple(fd for _, fd in stored)
            env["LISTEN_FDNAMES"] = ":".join(n for n, _ in stored)
            launcher = (
                "import fcntl,os,sys\n"
                "fds=[int(x) for x in sys.argv[1].split(',')]\n"
                "top=max(fds)+len(fds)+3\n"
                "high=[fcntl.fcntl(f, fcntl.F_DUPFD, top) for f in fds]\n"
                "[os.close(f) for f in fds]\n"
                "for i,f in enumerate(high): os.dup2(f, 3+i, inheritable=True); os.close(f)\n"
                "os.environ['LISTEN_FDS']=str(len(fds))\n"
                "os.environ['LISTEN_PID']=str(os.getpid())\n"
                "os.execv(sys.argv[2], sys.argv[2:])\n"
            )
            argv = [str(VENV_BIN / "python"), "-c", launcher, ",".join(map(str, pass_fds)), *argv]
        self.pb_log = open(self.dir / "phonebookd.log", "ab")  # noqa: SIM115
        self.pbd = self._spawn(
            ["nsenter", f"--net=/run/netns/{self.ns}", *argv],
            env=env,
            cwd=REPO,
            pass_fds=pass_fds,
            stdout=self.pb_log,
            stderr=subprocess.STDOUT,
        )
        if not self.systemd.ready.wait(10):
            raise RuntimeError("phonebookd not ready: " + self.log())

    def stop_phonebookd(self, sig: int = signal.SIGTERM) -> None:
        assert self.pbd is not None
        self.pbd.send_signal(sig)
        self.pbd.wait(10)
        self.procs.remove(self.pbd)
        self.pbd = None

    def log(self) -> str:
        try:
            return (self.dir / "phonebookd.log").read_text()
        except OSError:
            return ""

    def close(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        if self.systemd:
            self.systemd.close()
        for f in ("knot_log", "pb_log"):
            with contextlib.suppress(AttributeError):
                getattr(self, f).close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- asking DNS ---------------------------------------------------------------------

    def dig(self, name: str, rtype: str = "AAAA", server: str = "::1", short: bool = True) -> str:
        argv = ["dig", "+tries=1", "+time=1", f"@{server}", name, rtype]
        if short:
            argv.insert(1, "+short")
        return nsrun(self.ns, argv).stdout.strip()

    def wait_dig(
        self,
        name: str,
        pred: Callable[[str], bool],
        rtype: str = "AAAA",
        server: str = "::1",
        timeout: float = 5.0,
    ) -> float:
        """Seconds until `dig` answers so that pred(answer) holds; raises on timeout."""
        t0 = time.monotonic()
        while True:
            ans = self.dig(name, rtype, server)
            if pred(ans):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"dig {name} {rtype} @{server}: {ans!r} after {timeout}s")
            time.sleep(0.01)

    def busctl(
        self, *args: str, user: str | None = None, groups: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = ["busctl", f"--address={self.bus}", *args]
        if user:
            pre = [
                "setpriv",
                f"--reuid={user}",
                f"--regid={user if user != 'nobody' else 'nogroup'}",
            ]
            pre.append(f"--groups={groups}" if groups else "--clear-groups")
            argv = [*pre, *argv]
        return subprocess.run(argv, text=True, capture_output=True, timeout=10)


def add_workload_link(ns: str) -> None:
    """eth0 (+ its veth peer eth1) inside `ns`, both up: carrier for DAD."""
    subprocess.run(
        ["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], check=True
    )
    for dev in ("eth1", "eth0"):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)


def addr(ns: str, op: str, address: str, *extra: str) -> None:
    subprocess.run(["ip", "-n", ns, "addr", op, address, "dev", "eth0", *extra], check=True)


@pytest.fixture
def stack(netns: Callable[[str], str]) -> Iterator[Stack]:
    """A phonebook stack (knotd, private D-Bus, phonebookd) in a namespace of the test's
    own, closed after it. Modules use it as `stack = phonebookfix.stack`."""
    s = Stack(netns("dns"))
    try:
        yield s
    finally:
        s.close()
