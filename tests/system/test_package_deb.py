"""The Debian package, end to end: build + lintian, install into a minimal Debian root
booted with systemd as PID 1, `systemctl start netmux@httpd`, then `dpkg --purge`.

The .deb and the root come from tests/debfix.py (debian/make-package, mmdebstrap). The
user's whole story against a simulated ISP (DHCPv6-PD, reboot) is tests/system/test_story_deb.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import debfix
from tests.conftest import RUN, wait_for
from tests.debfix import OTHER, REPO, VOLATILE, RootBox, files

pytestmark = pytest.mark.system

workdir = debfix.workdir  # fixture
deb = debfix.deb  # fixture
root = debfix.root  # fixture
ZONE = "debroot.example.org"
STATIC = "2001:db8:0:1::1/64"


def want_resolver(box: RootBox, name: str) -> bool:
    """`ip netns exec NAME` sees the resolver netmux advertises."""
    out = box.run("ip", "netns", "exec", name, "cat", "/etc/resolv.conf").stdout
    return "nameserver fd64:cafe::53" in out.splitlines()


@pytest.fixture(scope="module")
def box(root: Path, deb: Path, workdir: Path) -> Iterator[RootBox]:
    shutil.copy(deb, root / "var" / "tmp" / deb.name)
    b = RootBox(f"{RUN}deb", workdir / "box", root)
    b.workdir.mkdir()
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_package_contents(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for expected in (
        "/usr/bin/netmux",
        "/usr/bin/phonebookd",
        "/usr/lib/python3/dist-packages/netmux/cli.py",
        "/usr/lib/netmux/vendor/pyroute2/__init__.py",
        "/etc/netmux/netmux.toml",
        "/usr/share/man/man8/netmux.8.gz",
        "/usr/share/man/man5/netmux.toml.5.gz",
        "/usr/share/doc/netmux/examples/netmux.toml",
    ):
        assert expected in paths, f"{expected} missing from {deb.name}"
    units = {p.rsplit("/", 1)[1] for p in paths if "/systemd/system/" in p and "." in p}
    assert "netmux@.service" in units and "netmux-mux.service" in units
    with tempfile.TemporaryDirectory() as tmp:  # placeholders filled in (recipes: verbatim)
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        unfilled = subprocess.run(["grep", "-rlE", "@(BINDIR|DOCDIR)@", tmp],
                                  capture_output=True, text=True).stdout.split()  # fmt: skip
        assert not [f for f in unfilled if "/examples/recipes/" not in f], unfilled
    control = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert "pyroute2" not in control  # vendored: Debian 12's 0.7.2 cannot run netmux


def test_install_start_workload_purge(box: RootBox, root: Path, deb: Path) -> None:
    before = files(root)
    group_before = (root / "etc" / "group").read_text()

    box.run("dpkg", "-i", f"/var/tmp/{deb.name}", timeout=120)
    # postinst: group and host key (0600), nothing enabled or started
    assert box.run("getent", "group", "netmux").stdout.startswith("netmux:")
    key = root / "var" / "lib" / "netmux" / "host.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32
    enabled = box.systemctl("list-unit-files", "--state=enabled", "netmux*", "phonebookd*",
                            "ipmuxd*", check=False).stdout  # fmt: skip
    assert "netmux" not in enabled.split("unit files listed")[0].replace("UNIT FILE", "")
    assert box.systemctl("is-active", "netmux-mux.service", check=False).stdout.strip() != "active"
    # The installed code runs with the vendored pyroute2, not a system copy.
    where = box.run("python3", "-c", "import netmux, pyroute2; print(pyroute2.__file__)").stdout
    assert where.startswith("/usr/lib/netmux/vendor/"), where

    # A static prefix on gw0, the dns recipe as its README says (Knot, RFC 2136), and a
    # workload that serves HTTP.
    ex = "/usr/share/doc/netmux/examples/recipes/dns"
    example = box.path(f"{ex}/netmux.toml.example").read_text()
    resolver_example = box.path(f"{ex}/../resolver/netmux.toml.example").read_text()
    box.path("/etc/netmux/netmux.toml").write_text(
        example.replace("[mux]\n", f'[mux]\nstatic_addresses = ["{STATIC}"]\n')
        + resolver_example.split("[nat64]")[0]  # no tayga here: DNS64 stays off
    )
    box.systemctl("disable", "--now", "knot.service")  # Debian's own, in the root namespace
    box.run("cp", f"{ex}/dns.toml", "/etc/netmux/workloads/")
    box.run("cp", "-r", f"{ex}/netmux@dns.service.d", "/etc/systemd/system/")
    box.systemctl("daemon-reload")
    box.systemctl("start", "netmux-radvd.service", timeout=60)
    r = box.systemctl("enable", "--now", "netmux@dns", "phonebookd", check=False, timeout=90)
    assert r.returncode == 0, box.run("journalctl", "--no-pager", "-n", "60").stdout
    assert box.path("/etc/netmux/phonebook.key").exists()
    box.path("/etc/netmux/workloads/httpd.toml").write_text(
        'command = ["python3", "-m", "http.server", "--bind", "::", "80"]\nports = ["tcp/80"]\n'
    )
    r = box.systemctl("start", "netmux@httpd.service", check=False, timeout=60)
    assert r.returncode == 0, box.run("journalctl", "--no-pager", "-n", "40").stdout
    assert box.systemctl("is-active", "netmux@httpd.service").stdout.strip() == "active"

    addrs = json.loads(box.run("ip", "-n", "httpd", "-j", "-6", "addr", "show").stdout)
    global_addrs = [
        a["local"]
        for link in addrs
        for a in link.get("addr_info", [])
        if a["local"].startswith("2001:db8:0:1:")
    ]
    assert global_addrs, addrs
    fetch = (
        "import time, urllib.request as u\n"
        "for _ in range(100):\n"
        "    try:\n"
        f"        print(u.urlopen('http://[{global_addrs[0]}]/', timeout=2).status); break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
    )
    out = box.run("ip", "netns", "exec", "mux", "python3", "-c", fetch, timeout=30).stdout
    assert out.strip() == "200"

    # The installed doctor sees the same: mux, static prefix, radvd answering, phonebookd.
    r = box.run("netmux", "doctor", "--json", check=False, timeout=60)
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    for cid in ("kernel.macvlan", "mux.links", "mux.forwarding", "mux.prefix", "ra",
                "daemons.radvd", "daemons.phonebookd"):  # fmt: skip
        assert checks[cid]["status"] == "ok", checks[cid]

    # Names resolve inside: the process netmux exec'd and `ip netns exec` see the
    # advertised resolver, the root namespace keeps its own resolv.conf.
    want = "nameserver fd64:cafe::53"
    pid = box.show("netmux@httpd.service", "MainPID")["MainPID"]
    assert want in box.run("cat", f"/proc/{pid}/root/etc/resolv.conf").stdout.splitlines()
    assert want in box.run("ip", "netns", "exec", "httpd", "cat", "/etc/resolv.conf").stdout
    assert want not in box.run("cat", "/etc/resolv.conf", check=False).stdout

    # Ready means resolvable: Knot answers at once, and STATUS= names what it serves.
    def dig(name: str, source: str, rtype: str = "AAAA") -> str:
        return box.run("ip", "netns", "exec", "mux", "dig", "+tries=1", "+time=2", "-b", source,
                       "@fd64:cafe::d", name, rtype).stdout  # fmt: skip

    assert global_addrs[0] in dig(f"httpd.{ZONE}", "fd64:cafe::1")
    status = box.show("netmux@httpd.service", "StatusText")["StatusText"]
    assert "global 2001:db8:0:1:" in status and f"dns httpd.{ZONE} httpd.internal" in status
    # Host-only stays host-only: internal. to a global source gets no answer, the ULA does.
    assert "fd64:cafe:" in dig("httpd.internal", "fd64:cafe::1")
    outside = dig("httpd.internal", STATIC.split("/")[0])
    assert "status: NOTAUTH" in outside and "ANSWER: 0" in outside, outside
    assert global_addrs[0] in dig(f"httpd.{ZONE}", STATIC.split("/")[0])
    # kill -9: the record and the namespace's resolv.conf go; a restart brings both back,
    # with the same address, resolvable the moment start returns.
    box.systemctl("kill", "-s", "KILL", "netmux@httpd.service")
    wait_for(lambda: "ANSWER: 0" in dig(f"httpd.{ZONE}", "fd64:cafe::1"), timeout=10)
    wait_for(lambda: not box.path("/etc/netns/httpd").exists(), timeout=10)
    box.systemctl("start", "netmux@httpd.service", timeout=60)
    assert global_addrs[0] in dig(f"httpd.{ZONE}", "fd64:cafe::1")
    assert want_resolver(box, "httpd")

    # The resolver recipe: now a name resolves inside a workload, with no manual step.
    box.systemctl("disable", "--now", "unbound.service", "unbound-resolvconf.service")
    rex = "/usr/share/doc/netmux/examples/recipes/resolver"
    box.run("cp", f"{rex}/resolver.toml", "/etc/netmux/workloads/")
    box.run("install", "-d", "/etc/systemd/system/netmux@resolver.service.d")
    box.sh(f"sed 's|@BINDIR@|/usr/bin|' '{rex}/netmux@resolver.service.d/unbound.conf' "
           "> /etc/systemd/system/netmux@resolver.service.d/unbound.conf")  # fmt: skip
    box.systemctl("daemon-reload")
    r = box.systemctl("start", "netmux@resolver.service", check=False, timeout=60)
    assert r.returncode == 0, box.run("journalctl", "--no-pager", "-n", "40").stdout
    # publish = false: no DNS name claimed anywhere.
    assert "dns" not in box.show("netmux@resolver.service", "StatusText")["StatusText"]
    assert "dns" not in box.run("netmux", "status", "resolver").stdout
    by_name = fetch.replace(f"[{global_addrs[0]}]", f"httpd.{ZONE}")
    out = box.run("ip", "netns", "exec", "httpd", "python3", "-c", by_name, timeout=30).stdout
    assert out.strip() == "200", "httpd could not fetch itself by name"

    # The README's quick-start drop-in, as written: User= and a port >= 1024.
    readme = (REPO / "README.md").read_text()
    dropin = readme.split("```ini\n", 1)[1].split("```", 1)[0]
    assert "User=www-data" in dropin
    box.path("/etc/systemd/system/netmux@web.service.d").mkdir(parents=True)
    box.path("/etc/systemd/system/netmux@web.service.d/override.conf").write_text(dropin)
    box.systemctl("daemon-reload")
    box.systemctl("enable", "--now", "netmux@web.service", timeout=60)

    def listening() -> bool:  # READY=1 comes before the exec'd server has bound its port
        ss = box.run("ip", "netns", "exec", "web", "ss", "-Hltn", check=False).stdout
        return ":8080" in ss

    try:
        box.wait_for(listening, timeout=60)
    except AssertionError:
        log = box.run("journalctl", "--no-pager", "-u", "netmux@web.service", "-n", "30").stdout
        raise AssertionError(f"netmux@web never listened on 8080:\n{log}") from None
    addrs = json.loads(box.run("ip", "-n", "web", "-j", "-6", "addr", "show").stdout)
    web = [a["local"] for link in addrs for a in link.get("addr_info", [])
           if a["local"].startswith("2001:db8:0:1:")]  # fmt: skip
    out = box.run("ip", "netns", "exec", "mux", "python3", "-c",
                  fetch.replace(f"[{global_addrs[0]}]/", f"[{web[0]}]:8080/"),
                  timeout=30).stdout  # fmt: skip
    assert out.strip() == "200"
    web_pid = box.show("netmux@web.service", "MainPID")["MainPID"]
    status_lines = box.run("cat", f"/proc/{web_pid}/status").stdout.splitlines()
    (uid_line,) = [x for x in status_lines if x.startswith("Uid:")]
    assert uid_line.split()[1] == box.run("id", "-u", "www-data").stdout.strip()
    out = box.run("netmux", "exec", "web", "--", "python3", "-c", by_name, timeout=30).stdout
    assert out.strip() == "200", "web could not fetch httpd by name"

    # remove keeps the configuration; purge removes what netmux made and keeps the rest.
    box.path("/etc/netmux/workloads/httpd.toml").unlink()  # the admin's own file
    box.path("/etc/netmux/workloads/mine.toml").write_text('ports = ["tcp/22"]\n')
    box.run("dpkg", "--remove", "netmux", timeout=120)
    for kept in ("/etc/netmux/netmux.toml", "/etc/netmux/phonebook.key",
                 "/etc/netmux/workloads/dns.toml", "/var/lib/netmux/host.key"):  # fmt: skip
        assert box.path(kept).exists(), f"remove took {kept}"
    r = box.run("dpkg", "--purge", "netmux", timeout=120)
    assert "keeping /etc/netmux/workloads/mine.toml (not created by netmux)" in r.stderr
    assert "keeping /etc/systemd/system/netmux@web.service.d (drop-ins not from" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    box.path("/etc/netmux/workloads/mine.toml").unlink()
    box.path("/etc/netmux/workloads").rmdir()
    box.path("/etc/netmux").rmdir()
    shutil.rmtree(box.path("/etc/systemd/system/netmux@web.service.d"))
    box.systemctl("daemon-reload")
    assert "not-found" not in box.systemctl("list-units", "--all", "netmux*", check=False).stdout
    # as they were before the test
    box.systemctl("enable", "knot.service", "unbound.service", "unbound-resolvconf.service")
    assert box.run("ls", "/run/netns", check=False).stdout.split() == []
    running = box.systemctl("list-units", "--plain", "--no-legend", "netmux*", check=False)
    assert running.stdout.strip() == ""
    assert box.run("getent", "group", "netmux", check=False).returncode == 2
    assert (root / "etc" / "group").read_text() == group_before
    after = files(root)
    added = sorted(p for p in set(after) - set(before) if not p.startswith(VOLATILE))
    removed = sorted(p for p in set(before) - set(after) if not p.startswith(VOLATILE))
    assert not added, f"left behind after purge: {added[:20]}"
    assert not removed, f"removed by install + purge: {removed[:20]}"


# --- the other release -------------------------------------------------------------------

BUILD_PACKAGES = (
    "build-essential,debhelper,dh-python,pybuild-plugin-pyproject,python3-all,"
    "python3-setuptools,dpkg-dev,lintian,pkg-config,"
    + ("systemd" if OTHER == "bookworm" else "systemd-dev")  # systemd-dev is new in 13
)
TREE_EXCLUDES = (".git", ".venv", "dist", "build", ".pytest_cache", ".mypy_cache",
                 ".ruff_cache", ".hypothesis")  # fmt: skip


def test_builds_installs_and_is_lintian_clean_on_the_other_release(
    deb: Path, workdir: Path
) -> None:
    """debian/make-package inside a root of the other release: dpkg-buildpackage -b, then
    that release's lintian (errors and warnings fail); units in /usr/lib/systemd/system."""
    debfix.need("mmdebstrap")
    wheel = REPO / "debian" / "vendor" / "pyroute2-0.9.7-py3-none-any.whl"
    assert wheel.exists(), "the build here (fixture deb) downloads the pinned wheel"
    root = workdir / OTHER
    try:
        r = subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=apt", "--mode=root",
             f"--include={BUILD_PACKAGES}", OTHER, str(root)],
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert r.returncode == 0, f"mmdebstrap {OTHER} failed:\n{r.stderr[-4000:]}"
        src = root / "src"
        shutil.copytree(
            REPO,
            src,
            symlinks=True,
            ignore=lambda d, names: [
                n
                for n in names
                if n in TREE_EXCLUDES or n.endswith(".egg-info") or n == "__pycache__"
            ],
        )
        r = subprocess.run(
            ["chroot", str(root), "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
             "HOME=/root", "LANG=C.UTF-8", "bash", "/src/debian/make-package", "/out"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, f"{OTHER} build:\n{r.stdout[-4000:]}\n{r.stderr[-3000:]}"
        (built,) = (root / "out").glob("netmux_*_all.deb")
        listing = subprocess.run(["dpkg-deb", "-c", str(built)], capture_output=True,
                                 text=True, check=True).stdout  # fmt: skip
        # Debian 13's debhelper installs units under /usr/lib, Debian 12's under /lib.
        unitdir = "./lib/systemd/system" if OTHER == "bookworm" else "./usr/lib/systemd/system"
        assert f"{unitdir}/netmux@.service" in listing

        # It installs there with that release's packages (apt resolves every Depends), runs
        # on its Python with the vendored pyroute2, and purges cleanly. (The booted test
        # above covers this machine's own release; the fresh-root check, `make test-fresh`,
        # runs this whole file natively on the other one.)
        def chroot(*cmd: str, timeout: float = 300) -> str:
            # The root may sit on a nodev mount (a container's /tmp): its own /dev/null
            # would not open, so the host's /dev is bound over it, in a mount namespace
            # of this command's own (gone when it exits).
            r = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"', str(root),
                 "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                 "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", *cmd],
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
            assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            return r.stdout

        # The chroot resolves the mirror as this machine does (mmdebstrap took its own
        # copies away); a failed update is an error here, not an empty package list.
        for name in ("hosts", "resolv.conf"):
            with contextlib.suppress(OSError):
                shutil.copy(Path("/etc") / name, root / "etc" / name)
        chroot("apt-get", "update", "-qq", "--error-on=any")
        chroot("apt-get", "install", "-y", "-qq", "--no-install-recommends", f"/out/{built.name}")
        assert chroot("netmux", "--version").strip() == "netmux 0.1.0"
        where = chroot("python3", "-c", "import netmux, pyroute2; print(pyroute2.__version__, "
                       "pyroute2.__file__)")  # fmt: skip
        assert where.startswith("0.9.7 /usr/lib/netmux/vendor/"), where
        assert (root / "var/lib/netmux/host.key").stat().st_mode & 0o777 == 0o600
        chroot("apt-get", "purge", "-y", "-qq", "netmux")
        assert not (root / "var/lib/netmux").exists() and not (root / "etc/netmux").exists()
        assert "netmux:" not in (root / "etc/group").read_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)
