"""The README's two commands on a fresh minimal Debian root: the proof that set-up is complete.

    python3 tests/fresh_root.py trixie|bookworm [--only demo|test] [--keep]

(`make test-fresh RELEASE=...` runs this.) A `mmdebstrap --variant=minbase` root of the
release is cached as a tarball under /var/cache/netmux-fresh (rebuilt when older than a
week or when the recipe changes), unpacked afresh for every run, and a `git archive` of
HEAD is put at /root/netmux — under /root on purpose: mode 0700, as a real admin's
checkout would be. Nothing else is installed. Then each command of the README's first
code block runs, exactly as written, as root inside

    systemd-nspawn -D ROOT --private-network --capability=all --as-pid2

(a plain command container with a network namespace of its own, where namespaces, nested
nspawn and a nested systemd all work). One line per command says its result and time;
the full output is kept in the run's log directory.

The container has only loopback. The package mirrors are reached through a small TCP
forwarder run here: its listening sockets are created inside the container's network
namespace (a thread enters it, binds, and the sockets stay there), its outbound
connections leave from this host's namespace, and the container's /etc/hosts maps the
mirror names to the forwarder's loopback addresses. The host's trusted CA certificates
are copied in (some networks intercept TLS), so pip verifies the index as it does here.
These two are the plumbing of this machine, not set-up the project may rely on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("NETMUX_FRESH_CACHE", "/var/cache/netmux-fresh"))
WORK = Path(os.environ.get("NETMUX_FRESH_WORK", "/var/tmp"))
MAX_AGE = 7 * 86400
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
# Hosts the set-up reaches: Debian's mirrors (apt; mmdebstrap in the package test, which
# on Debian 13 adds security.debian.org by itself) and PyPI.
HOSTS = ("deb.debian.org", "security.debian.org", "pypi.org", "files.pythonhosted.org")
PORTS = (80, 443)
CHECKOUT = "/root/netmux"
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1


def readme_commands(readme: Path = REPO / "README.md") -> list[str]:
    """The commands of the README's first ```sh block, comments stripped."""
    m = re.search(r"```sh\n(.*?)```", readme.read_text(), re.S)
    if not m:
        raise SystemExit(f"{readme}: no ```sh block with the set-up commands")
    cmds = [line.split("#", 1)[0].strip() for line in m.group(1).splitlines()]
    return [c for c in cmds if c]


def sources(release: str) -> list[str]:
    return [
        f"deb {MIRROR} {release} main",
        f"deb {MIRROR} {release}-updates main",
        f"deb {SECURITY} {release}-security main",
    ]


def minbase(release: str) -> Path:
    """The cached minbase tarball for `release`, built when missing, stale or changed."""
    recipe = ["mmdebstrap", "--variant=minbase", "--components=main", release, *sources(release)]
    tag = hashlib.sha256("\0".join(recipe).encode()).hexdigest()[:12]
    tar = CACHE / f"{release}-minbase-{tag}.tar"
    if tar.exists() and time.time() - tar.stat().st_mtime < MAX_AGE:
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    for old in CACHE.glob(f"{release}-minbase-*.tar"):
        old.unlink()
    print(f"fresh {release}: building the minbase root (mmdebstrap, cached in {CACHE})", flush=True)
    part = tar.with_suffix(".part.tar")
    r = subprocess.run([*recipe[:-3], str(part), *recipe[-3:]], capture_output=True, text=True)
    if r.returncode != 0:
        part.unlink(missing_ok=True)
        raise SystemExit(f"fresh {release}: mmdebstrap failed:\n{r.stderr[-3000:]}")
    part.rename(tar)
    return tar


def prepare_root(release: str, run_dir: Path) -> Path:
    root = run_dir / "root"
    root.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(minbase(release))],
                   check=True)  # fmt: skip
    checkout = root / CHECKOUT.lstrip("/")
    checkout.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True,
                             check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-C", str(checkout), "-x"], input=archive, check=True)
    # Plumbing of this machine (see the module docstring): mirror names and trusted CAs.
    write_hosts(root)
    local_ca = Path("/usr/local/share/ca-certificates")
    if local_ca.is_dir():
        shutil.copytree(local_ca, root / local_ca.relative_to("/"), dirs_exist_ok=True)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copy(bundle, root / "etc/ssl/certs/ca-certificates.crt")
    return root


def write_hosts(root: Path) -> None:
    """The container's /etc/hosts: localhost and the mirror names on the forwarder."""
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    lines += [f"127.0.1.{i + 10} {h}" for i, h in enumerate(HOSTS)]
    (root / "etc" / "hosts").write_text("\n".join(lines) + "\n")


# --- the forwarder ---------------------------------------------------------------------------


def _setns(fd: int) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def listeners_in(pid: int, timeout: float = 10.0) -> list[tuple[socket.socket, str, int]]:
    """Listening sockets inside `pid`'s network namespace, one per (mirror host, port)."""
    out: list[tuple[socket.socket, str, int]] = []
    err: list[BaseException] = []

    def enter_and_bind() -> None:  # a thread of its own: setns() is per thread
        try:
            with open(f"/proc/{pid}/ns/net") as f:
                _setns(f.fileno())
            deadline = time.monotonic() + timeout
            for i, host in enumerate(HOSTS):
                for port in PORTS:
                    while True:  # loopback comes up when nspawn has set up the container
                        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        try:
                            s.bind((f"127.0.1.{i + 10}", port))
                            break
                        except OSError:
                            s.close()
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.05)
                    s.listen(64)
                    s.setblocking(False)
                    out.append((s, host, port))
        except BaseException as e:  # handed to the caller
            err.append(e)

    t = threading.Thread(target=enter_and_bind)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out


async def _pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            w.close()


async def _serve(listeners: list[tuple[socket.socket, str, int]], stop: asyncio.Event) -> None:
    async def handler(host: str, port: int, r: asyncio.StreamReader,
                      w: asyncio.StreamWriter) -> None:  # fmt: skip
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        except (OSError, TimeoutError):
            w.close()
            return
        await asyncio.gather(_pipe(r, uw), _pipe(ur, w))

    servers = []
    for sock, host, port in listeners:
        servers.append(
            await asyncio.start_server(lambda r, w, h=host, p=port: handler(h, p, r, w), sock=sock)
        )
    await stop.wait()
    for s in servers:
        s.close()


class Forwarder:
    """The mirror forwarder for one container, on a thread with its own event loop."""

    def __init__(self, pid: int) -> None:
        self.listeners = listeners_in(pid)
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.loop.run_until_complete(_serve(self.listeners, self.stop_event))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(5)


# --- the container ---------------------------------------------------------------------------


@contextlib.contextmanager
def cgroup(name: str) -> Iterator[list[Path]]:
    """A cgroup of its own for nspawn (in every mounted hierarchy), removed afterwards."""
    made = []
    for h in ("systemd", "unified"):
        base = Path("/sys/fs/cgroup") / h
        if base.is_dir() and (base / "cgroup.procs").exists():
            (base / name).mkdir(exist_ok=True)
            made.append(base / name)
    try:
        yield made
    finally:
        for cg in made:
            for d in sorted(cg.rglob("*"), key=lambda p: -len(p.parts)):
                if d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()
            with contextlib.suppress(OSError):
                cg.rmdir()


def run_in_container(root: Path, name: str, command: str, log: Path, timeout: float) -> int:
    """`command` as root in `CHECKOUT` inside a fresh plain container; its exit status."""
    ready = "/run/netmux-fresh-go"
    script = (
        f"while [ ! -e {ready} ]; do sleep 0.1; done; cd {CHECKOUT} && exec bash -c {command!r}"
    )
    notify = log.with_suffix(".notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    argv = [
        "systemd-nspawn", "--quiet", "-D", str(root), "-M", name, "--private-network",
        "--capability=all", "--as-pid2", "--register=no", "--keep-unit", "--resolv-conf=off",
        "--timezone=off", "--link-journal=no", "--setenv=DEBIAN_FRONTEND=noninteractive",
        "--setenv=LANG=C.UTF-8", "bash", "-c", script,
    ]  # fmt: skip
    with cgroup(name) as cgroups, open(log, "wb") as out:

        def own_cgroup() -> None:
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            for cg in cgroups:
                (cg / "cgroup.procs").write_text(str(os.getpid()))

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
        env["NOTIFY_SOCKET"] = str(notify)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            preexec_fn=own_cgroup,
        )  # fmt: skip
        fwd = None
        try:
            leader = _leader(sock, proc, 30.0)
            fwd = Forwarder(leader)
            Path(f"/proc/{leader}/root{ready}").touch()
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                out.write(f"\nfresh: timed out after {timeout:.0f} s\n".encode())
                return 124
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if fwd:
                fwd.close()
            sock.close()
            notify.unlink(missing_ok=True)


def _leader(sock: socket.socket, proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        sock.settimeout(0.5)
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        for line in data.splitlines():
            if line.startswith("X_NSPAWN_LEADER_PID="):
                return int(line.partition("=")[2])
    raise SystemExit("fresh: the container did not start (no X_NSPAWN_LEADER_PID)")


def _tail(log: Path, n: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("release", choices=["bookworm", "trixie"])
    p.add_argument("--only", choices=["demo", "test"], help="only the command of this make goal")
    p.add_argument("--keep", action="store_true", help="keep the root and logs afterwards")
    p.add_argument("--timeout", type=float, default=2400.0, help="seconds per command")
    p.add_argument("--in", dest="reuse", type=Path, metavar="ROOT",
                   help="(debugging) run --cmd in a kept root instead of a fresh one")  # fmt: skip
    p.add_argument("--cmd", help="(debugging, with --in) the command to run there")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("make test-fresh: run as root (it boots containers)", file=sys.stderr)
        return 2
    if a.reuse:
        write_hosts(a.reuse)
        log = a.reuse.parent / "debug.log"
        rc = run_in_container(a.reuse, "nmfrdbg" + secrets.token_hex(2), a.cmd or "true", log,
                              a.timeout)  # fmt: skip
        print(log.read_text(errors="replace"))
        return rc
    cmds = readme_commands()
    if a.only:
        cmds = [c for c in cmds if re.search(rf"\bmake {a.only}\b", c)]
    run = "nmfr" + secrets.token_hex(2)
    run_dir = WORK / f"netmux-fresh-{run}"
    logs = run_dir / "logs"
    failed = 0
    try:
        t0 = time.monotonic()
        root = prepare_root(a.release, run_dir)
        logs.mkdir()
        took = time.monotonic() - t0
        print(f"fresh {a.release}: root ready in {took:.0f} s ({root})", flush=True)
        for i, cmd in enumerate(cmds, 1):
            log = logs / f"{i}.log"
            t = time.monotonic()
            rc = run_in_container(root, f"{run}c{i}", cmd, log, a.timeout)
            took = time.monotonic() - t
            verdict = "ok" if rc == 0 else f"FAILED (exit {rc})"
            if rc != 0:
                failed += 1
                print(f"--- last lines of {log}:\n{_tail(log)}", flush=True)
            text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))  # colours
            summary = [ln for ln in text.splitlines()
                       if re.match(r"^=+ .*\b(passed|failed|error)", ln)]  # fmt: skip
            extra = f"  [{summary[-1].strip('= ')}]" if summary else ""
            print(f"fresh {a.release}: {cmd}: {verdict} in {took:.0f} s{extra}", flush=True)
    finally:
        if a.keep or failed:
            print(f"fresh {a.release}: kept {run_dir}", flush=True)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
