"""The home-lab owner's story, end to end from the .deb, facing a simulated ISP.

    internet netns --- ISP netns (the lab's upstream: kea delegating a /60 by DHCPv6-PD,
      2001:db8:ff::2      radvd with RDNSS, udhcpd, unbound for isp.test)
                          bridge lan0 --- veth --- enp2s0 of a Debian root booted with
                                                   systemd (tests/debfix.py), the .deb
                                                   installed with `apt install`

Inside, as the README and the recipes say, literally: the quick start (uplinks, domain,
`systemctl enable --now ...`, the README's drop-in for netmux@httpd), recipes/dns (Knot,
RFC 2136) and recipes/resolver (unbound, DNS64). Then, each once broken: names resolve
inside workloads with no manual step; ready means resolvable (no retry for the first
dig, `netmux run` starts its command after its record exists); host-only zones stay
host-only from the internet; a `publish = false` workload claims no name; kill -9 drops
the record, a restart brings the same address back; a reboot (the same root powered off
and booted again, the ISP still up) brings the same prefix, addresses and names back;
`dpkg --remove` keeps configuration, `dpkg --purge` leaves nothing netmux created.

The ISP is the one mock (a real one cannot exist here); it routes the delegated /60 to
the box's link-local address on the uplink, as a real router does from the lease.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import shutil
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from netmux import config
from netmux.config import HostConfig
from netmux.lab import supervise, upstream
from tests import debfix
from tests.conftest import RUN, wait_for
from tests.debfix import REPO, VOLATILE, RootBox, files

pytestmark = [
    pytest.mark.system,
    pytest.mark.requires("kea-dhcp6", "radvd", "unbound", "busybox", "dig", "curl"),
]

workdir = debfix.workdir  # fixture
deb = debfix.deb  # fixture
root = debfix.root  # fixture

ISP, INET = f"{RUN}isp", f"{RUN}inet"  # host-side namespaces
CABLE = f"{RUN}cab"  # the ISP's end of the box's NIC (a port of its bridge lan0)
NIC = "enp2s0"  # the box's NIC, as in the README
DELEGATED = IPv6Network("2001:db8:0:10::/60")
INTERNET = IPv6Interface("2001:db8:ff::2/64")
ISP_WAN = IPv6Interface("2001:db8:ff::1/64")
HOSTNAME, DOMAIN = "debroot", "example.org"
ZONE = f"{HOSTNAME}.{DOMAIN}"
DOC = "/usr/share/doc/netmux/examples"
TAYGA = "tayga" in debfix.ROOT_PACKAGES.split(",")


def sh(*argv: str, check: bool = True) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


# --- the ISP and the internet (host side) -------------------------------------------------


@pytest.fixture(scope="module")
def isp(workdir: Path) -> Iterator[HostConfig]:
    """The ISP's namespace with its bridge (a stub port keeps its carrier while the box is
    off), the internet behind it; its daemons start once the box is plugged in."""
    cfg = workdir / "isp.toml"
    cfg.write_text(
        f'[mux]\nnetns = "{RUN}nomux"\nuplinks = ["{RUN}nou*"]\n'
        f'[lab]\nrouter_netns = "{ISP}"\nrouter_link = "lan0"\n'
        f'[dns]\nhostname = "{HOSTNAME}"\ndomain = "{DOMAIN}"\n'
        f'[paths]\nstate_dir = "{workdir}/isp-state"\nrun_dir = "{workdir}/isp-run"\n'
    )
    host = config.load_host(cfg)
    try:
        sh("ip", "netns", "add", ISP)
        sh("ip", "netns", "add", INET)
        isp_ip = ("ip", "-n", ISP)
        sh(*isp_ip, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ISP, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        sh(*isp_ip, "link", "add", "lan0", "type", "bridge", "mcast_snooping", "0")
        sh(*isp_ip, "link", "add", "stub0", "type", "veth", "peer", "name", "stub1")
        sh(*isp_ip, "link", "set", "stub0", "master", "lan0", "up")
        sh(*isp_ip, "link", "set", "stub1", "up")
        sh(*isp_ip, "link", "set", "lan0", "up")
        for a in ("fe80::1/64", str(host.lab.router_address)):
            sh(*isp_ip, "-6", "addr", "replace", a, "dev", "lan0", "nodad")
        sh(*isp_ip, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", INET)
        sh(*isp_ip, "link", "set", "wan0", "up")
        sh(*isp_ip, "-6", "addr", "replace", str(ISP_WAN), "dev", "wan0", "nodad")
        sh("ip", "-n", INET, "link", "set", "lo", "up")
        sh("ip", "-n", INET, "link", "set", "eth0", "up")
        sh("ip", "-n", INET, "-6", "addr", "replace", str(INTERNET), "dev", "eth0", "nodad")
        sh("ip", "-n", INET, "-6", "route", "replace", "default", "via", str(ISP_WAN.ip))
        yield host
    finally:
        run = upstream_run(host)
        for name in upstream.DAEMONS:
            supervise.stop(name, run)
        for ns in (ISP, INET):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(Path("/etc/netns") / INET, ignore_errors=True)


def upstream_run(host: HostConfig) -> Path:
    return host.paths.run_dir / "isp"


def plugged_in_at_boot(box: RootBox, host: HostConfig) -> None:
    """Boot the box with its NIC plugged into the ISP's bridge from the start, like a real
    cable: nspawn makes the veth (the same MAC at every boot, so the DUID and with it the
    delegation stay the same, like a real NIC's) and its host end goes into the bridge as
    soon as it appears, long before the box's dhcpcd runs."""
    plugged, failed = threading.Event(), threading.Event()

    def plug() -> None:
        deadline = time.monotonic() + 60
        while not Path(f"/sys/class/net/{CABLE}").exists():
            if time.monotonic() > deadline or failed.is_set():
                return
            time.sleep(0.005)
        sh("ip", "link", "set", CABLE, "netns", ISP)
        sh("ip", "-n", ISP, "link", "set", CABLE, "master", "lan0", "up")
        plugged.set()

    t = threading.Thread(target=plug, daemon=True)
    t.start()
    try:
        box.start(veth_extra=[(CABLE, NIC)], timeout=60)
    except BaseException:
        failed.set()
        raise
    finally:
        t.join(65)
    assert plugged.is_set(), f"{CABLE} never appeared: {box.console_tail()}"


def route_delegation(box: RootBox) -> IPv6Address:
    """The ISP routes the /60 to the box's link-local on the uplink (a real router takes
    it from the lease); returns the /64 on gw0's first address, once the lease is there."""
    out = box.wait_for(
        lambda: (
            box.run(
                "ip",
                "-n",
                "mux",
                "-6",
                "-o",
                "addr",
                "show",
                "dev",
                NIC,
                "scope",
                "link",
                check=False,
            ).stdout
        ),
        timeout=30,
    )
    ll = re.search(r"inet6 (fe80::[0-9a-f:]+)/", str(out))
    assert ll, out
    sh("ip", "-n", ISP, "-6", "route", "replace", str(DELEGATED), "via", ll[1], "dev", "lan0")
    gw = box.wait_for(lambda: gw0_prefix(box), timeout=30)
    assert isinstance(gw, IPv6Address)
    return gw


def gw0_prefix(box: RootBox) -> IPv6Address | None:
    out = box.run("ip", "-n", "mux", "-6", "-o", "addr", "show", "dev", "gw0", "scope",
                  "global", check=False).stdout  # fmt: skip
    for a in re.findall(r"inet6 ([0-9a-f:]+)/64", out):
        if IPv6Address(a) in DELEGATED:
            return IPv6Address(a)
    return None


def internet(*cmd: str, check: bool = False) -> str:
    r = subprocess.run(["ip", "netns", "exec", INET, *cmd], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    if check and r.returncode != 0:
        raise AssertionError(f"from the internet: {' '.join(cmd)}: {r.stdout}{r.stderr}")
    return r.stdout


def dig(server: str, *query: str) -> str:
    return internet("dig", "+tries=1", "+time=2", "+norecurse", f"@{server}", *query)


def answers(out: str) -> list[str]:
    """The ANSWER section's data (dig's full output)."""
    sec = out.split(";; ANSWER SECTION:\n", 1)
    if len(sec) < 2:
        return []
    return [ln.split()[-1] for ln in sec[1].split("\n\n", 1)[0].splitlines() if ln.strip()]


# --- the box ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def box(root: Path, deb: Path, workdir: Path, isp: HostConfig) -> Iterator[RootBox]:
    shutil.copy(deb, root / "var" / "tmp" / deb.name)
    (root / "etc" / "hostname").write_text(HOSTNAME + "\n")
    b = RootBox(f"{RUN}story", workdir / "story", root)
    b.workdir.mkdir()
    try:
        upstream.up(isp, upstream_run(isp), DELEGATED)
        plugged_in_at_boot(b, isp)
        yield b
    finally:
        b.stop(timeout=60)


def global_addrs(box: RootBox, netns: str) -> list[IPv6Address]:
    out = box.run("ip", "-n", netns, "-6", "-o", "addr", "show", "scope", "global",
                  check=False).stdout  # fmt: skip
    return [IPv6Address(a) for a in re.findall(r"inet6 ([0-9a-f:]+)/", out)]


def delegated_addr(box: RootBox, netns: str) -> IPv6Address:
    """The workload's address inside the delegation (waited for)."""
    got = box.wait_for(lambda: [a for a in global_addrs(box, netns) if a in DELEGATED], 30)
    assert isinstance(got, list) and isinstance(got[0], IPv6Address)
    return got[0]


def ula_addr(box: RootBox, netns: str) -> IPv6Address:
    (a,) = [a for a in global_addrs(box, netns) if a in IPv6Network("fd64:cafe::/64")][:1]
    return a


def merged(*texts: str) -> str:
    """TOML tables merged key by key, as "merge X into /etc/netmux/netmux.toml" means."""
    out: dict[str, dict[str, Any]] = {}
    for t in texts:
        for table, keys in tomllib.loads(t).items():
            out.setdefault(table, {}).update(keys)

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    return "".join(
        f"[{t}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())
        for t, keys in out.items()
    )


def recipe_steps(readme: str) -> list[str]:
    """The indented shell block of a recipe's README, continuation lines joined."""
    block = readme.split("\n\n    ", 1)[1].split("\n\n", 1)[0]
    lines = ("    " + block).replace("\\\n", " ").splitlines()
    return [ln.strip() for ln in lines if ln.strip()]


def run_steps(box: RootBox, steps: list[str], here: str, merge: str) -> None:
    """Each step of a recipe as written (cp recipes/... from the installed examples);
    "merge X into netmux.toml" merges; a dig line must get an answer."""
    for step in steps:
        if step.startswith("# merge"):
            conf = box.path("/etc/netmux/netmux.toml")
            conf.write_text(merged(conf.read_text(), box.path(f"{here}/{merge}").read_text()))
            continue
        cmd = step.replace("recipes/", f"{DOC}/recipes/")
        r = box.sh(cmd, check=False, timeout=120)
        if step.startswith("dig "):  # the recipe's own check: an answer
            assert answers(r.stdout), f"{step}:\n{r.stdout}"
        assert r.returncode == 0, f"recipe step failed: {step}\n{r.stdout}{r.stderr}\n" + (
            box.run("journalctl", "--no-pager", "-n", "50", check=False).stdout
        )


def wait_listening(box: RootBox, netns: str, port: int) -> None:
    """READY=1 comes before the exec'd server has bound its port."""
    box.wait_for(
        lambda: (
            f":{port}" in box.run("ip", "netns", "exec", netns, "ss", "-Hltn", check=False).stdout
        ),
        timeout=30,
    )


def status_text(box: RootBox, unit: str) -> str:
    return box.show(unit, "StatusText")["StatusText"]


# --- the story ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def story() -> dict[str, Any]:
    """What the first part of the story found, for the part after the reboot."""
    return {}


@pytest.fixture(scope="module")
def rebooted(box: RootBox, isp: HostConfig, story: dict[str, Any]) -> RootBox:
    """The owner enables netmux@httpd and reboots: power off, boot the same root (the ISP
    stays up). A fixture, so that the new container is not a leak of the test."""
    if "httpd" not in story:
        pytest.skip("the story before the reboot did not get through")
    box.systemctl("enable", "netmux@httpd.service")
    box.stop(timeout=60)
    plugged_in_at_boot(box, isp)
    return box


def test_story_from_the_deb_facing_an_isp(
    box: RootBox, root: Path, deb: Path, isp: HostConfig, story: dict[str, Any]
) -> None:
    story["before"] = files(root)
    story["group"] = (root / "etc" / "group").read_text()

    # make package && apt install ./dist/netmux_*.deb
    r = box.run("apt", "install", "-y", f"/var/tmp/{deb.name}", timeout=180,
                env={"DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    assert "netmux" in box.run("dpkg-query", "-W", "netmux").stdout

    # 8. `netmux lab up` with the host's own config says in one line what to pass; with
    # the demo config it works (and goes again).
    r = box.run("netmux", "lab", "up", check=False, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("netmux lab:")]
    assert len(errors) == 1 and "--config" in errors[0], r.stderr
    demo = f"{DOC}/demo.toml"
    r = box.run("netmux", "--config", demo, "lab", "up", check=False, timeout=90)
    assert r.returncode == 0, r.stderr
    box.run("netmux", "--config", demo, "lab", "down", timeout=60)

    # The quick start: uplinks and domain, the host services, doctor.
    conf = box.path("/etc/netmux/netmux.toml")
    conf.write_text(
        conf.read_text() + f'\n[mux]\nuplinks = ["{NIC}"]\n[dns]\ndomain = "{DOMAIN}"\n'
    )
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start on a real host", 1)[1].split("```sh\n", 1)[1]
    enable = next(ln for ln in quick.splitlines() if ln.startswith("systemctl enable"))
    r = box.sh(enable, check=False, timeout=120)
    assert r.returncode == 0, r.stderr + box.run("journalctl", "--no-pager", "-n", "50").stdout
    gw = route_delegation(box)
    doctor = box.run("netmux", "doctor", check=False, timeout=60)
    assert "Traceback" not in doctor.stdout + doctor.stderr, doctor.stderr

    # 5. The README's drop-in, as written, for netmux@httpd; reachable from the internet.
    dropin = readme.split("```ini\n", 1)[1].split("```", 1)[0]
    box.write("/etc/systemd/system/netmux@httpd.service.d/override.conf", dropin)
    box.systemctl("daemon-reload")
    r = box.systemctl("start", "netmux@httpd", check=False, timeout=60)
    assert r.returncode == 0, box.run("journalctl", "--no-pager", "-n", "40").stdout
    httpd = delegated_addr(box, "httpd")
    assert IPv6Network(f"{gw}/64", strict=False) == IPv6Network(f"{httpd}/64", strict=False)
    wait_listening(box, "httpd", 8080)
    page = internet("curl", "-sS", "-m", "10", "-g", "-o", "/dev/null", "-w", "%{http_code}",
                    f"http://[{httpd}]:8080/", check=True)  # fmt: skip
    assert page == "200"
    main = box.show("netmux@httpd.service", "MainPID")["MainPID"]
    proc_status = box.run("cat", f"/proc/{main}/status").stdout.splitlines()
    uid = next(ln for ln in proc_status if ln.startswith("Uid:")).split()[1]
    assert uid == box.run("id", "-u", "www-data").stdout.strip()

    # 7. A missing daemon is one line (Knot's user stands for Knot not installed).
    r = box.run("python3", "-m", "netmux.phonebook.knot", "/run/k", "--user", "noknot:noknot",
                check=False)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "apt-get install knot" in r.stderr
    # recipes/dns, then recipes/resolver, step by step as their READMEs say. Debian's own
    # services they disable are enabled again after the purge where they were before.
    debian_own = ["knot.service", "unbound.service", "unbound-resolvconf.service"]
    debian_own += ["tayga.service"] if TAYGA else []
    story["enabled"] = [
        u
        for u in debian_own
        if box.systemctl("is-enabled", u, check=False).stdout.strip() == "enabled"
    ]
    for name, merge in (("dns", "netmux.toml.example"), ("resolver", "netmux.toml.example")):
        here = f"{DOC}/recipes/{name}"
        steps = recipe_steps(box.path(f"{here}/README.md").read_text())
        if not TAYGA:  # the release has no tayga: no NAT64, the rest as written
            steps = [s.replace("netmux-tayga.service ", "").replace(" tayga ", " ") for s in steps]
            steps = [s for s in steps if "tayga.service" not in s]
        run_steps(box, steps, here, merge)
    for unit in ("knot.service", "unbound.service", "radvd.service", "tayga.service"):
        state = box.systemctl("is-active", unit, check=False).stdout.strip()
        assert state != "active", f"Debian's own {unit} runs next to netmux's"
    if TAYGA:  # NAT64 on: dhcpcd (restarted by the recipe) got IPv4 for it
        box.wait_for(lambda: box.run("ip", "-n", "mux", "-4", "route", "show", "default").stdout)
    dns = delegated_addr(box, "dns")
    # The recipe restarted dhcpcd, which withdraws gw0's prefix until it has the lease
    # again: the internet reaches the workloads once it is back.
    wait_for(lambda: answers(dig(str(dns), f"dns.{ZONE}", "AAAA")) == [str(dns)], timeout=20)

    # 2. Ready means resolvable: the AAAA is there the moment start returns.
    box.systemctl("restart", "netmux@httpd", timeout=60)
    assert delegated_addr(box, "httpd") == httpd
    assert answers(dig(str(dns), f"httpd.{ZONE}", "AAAA")) == [str(httpd)]
    st = status_text(box, "netmux@httpd.service")
    assert f"httpd.{ZONE}" in st, st
    # `netmux run` starts its command after its own record exists.
    out = box.run("netmux", "run", "probe", "--", "dig", "+short", "@fd64:cafe::d",
                  f"probe.{ZONE}", "AAAA", timeout=60).stdout  # fmt: skip
    (probe,) = [ln for ln in out.splitlines() if ln and not ln.startswith(";")]
    assert IPv6Address(probe) in DELEGATED

    # 1. Names resolve inside workloads (resolv.conf names the advertised resolver).
    wait_listening(box, "httpd", 8080)
    url = f"http://httpd.{ZONE}:8080/"
    curl = ("curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", url)
    assert box.run("ip", "netns", "exec", "httpd", *curl, timeout=30).stdout == "200"
    assert box.run("netmux", "exec", "httpd", "--", *curl, timeout=30).stdout == "200"
    main = box.show("netmux@httpd.service", "MainPID")["MainPID"]
    resolv = box.run("cat", f"/proc/{main}/root/etc/resolv.conf").stdout.splitlines()
    assert "nameserver fd64:cafe::53" in resolv, resolv
    # From the internet, by name (its resolver: the zone's server).
    (Path("/etc/netns") / INET).mkdir(parents=True, exist_ok=True)
    (Path("/etc/netns") / INET / "resolv.conf").write_text(f"nameserver {dns}\n")
    assert internet(*curl, check=True) == "200"

    # 3. Host-only stays host-only: internal. and the ULA's reverse zone give the internet
    # no data; the global zone answers.
    for q in (("httpd.internal", "AAAA"), ("-x", str(ula_addr(box, "httpd")))):
        out = dig(str(dns), *q)
        assert re.search(r"status: (NOTAUTH|REFUSED)", out) and not answers(out), out
    assert answers(dig(str(dns), f"httpd.{ZONE}", "AAAA")) == [str(httpd)]

    # 4. publish = false: no DNS name in STATUS= nor in `netmux status`.
    assert "dns" not in status_text(box, "netmux@resolver.service")
    assert "dns" not in box.run("netmux", "status", "resolver").stdout

    # kill -9: the record goes; a start brings the same address, resolvable at once.
    box.systemctl("kill", "-s", "KILL", "netmux@httpd.service")
    wait_for(lambda: not answers(dig(str(dns), f"httpd.{ZONE}", "AAAA")), timeout=15)
    box.systemctl("start", "netmux@httpd.service", timeout=60)
    assert answers(dig(str(dns), f"httpd.{ZONE}", "AAAA")) == [str(httpd)]

    story.update(httpd=httpd, dns=dns, gw=gw, curl=curl)


def test_after_a_reboot_the_same_addresses_and_names_then_purge(
    rebooted: RootBox, root: Path, story: dict[str, Any]
) -> None:
    box = rebooted
    httpd, dns, gw, curl = (story[k] for k in ("httpd", "dns", "gw", "curl"))
    assert route_delegation(box) == gw

    def settled(unit: str) -> bool:
        return box.show(unit, "ActiveState")["ActiveState"] in ("active", "failed")

    for unit in ("netmux@dns", "netmux@resolver", "netmux@httpd", "phonebookd"):
        box.wait_for(functools.partial(settled, unit), timeout=60)
        state = box.show(unit, "ActiveState")["ActiveState"]
        assert state == "active", box.run("journalctl", "--no-pager", "-b", "-u", unit).stdout
    assert delegated_addr(box, "dns") == dns and delegated_addr(box, "httpd") == httpd
    for unit in ("knot.service", "unbound.service", "radvd.service", "tayga.service"):
        state = box.systemctl("is-active", unit, check=False).stdout.strip()  # also at boot
        assert state != "active", f"Debian's own {unit} runs next to netmux's"
    wait_for(lambda: answers(dig(str(dns), f"httpd.{ZONE}", "AAAA")) == [str(httpd)], 30)
    wait_listening(box, "httpd", 8080)
    assert internet(*curl, check=True) == "200"

    # 6. remove keeps the configuration; purge removes what netmux made, keeps the rest.
    box.write("/etc/netmux/workloads/mine.toml", 'ports = ["tcp/22"]\n')
    box.run("dpkg", "--remove", "netmux", timeout=120)
    for kept in ("/etc/netmux/netmux.toml", "/etc/netmux/phonebook.key",
                 "/etc/netmux/workloads/dns.toml", "/var/lib/netmux/host.key"):  # fmt: skip
        assert box.path(kept).exists(), f"remove took {kept}"
    r = box.run("dpkg", "--purge", "netmux", timeout=120)
    assert "Traceback" not in r.stdout + r.stderr
    assert "keeping /etc/netmux/workloads/mine.toml (not created by netmux)" in r.stderr
    assert "keeping /etc/systemd/system/netmux@httpd.service.d (drop-ins not from" in r.stderr
    # What the admin wrote goes by hand; everything else was netmux's.
    box.path("/etc/netmux/workloads/mine.toml").unlink()
    with contextlib.suppress(OSError):
        box.path("/etc/netmux/workloads").rmdir()
        box.path("/etc/netmux").rmdir()
    shutil.rmtree(box.path("/etc/systemd/system/netmux@httpd.service.d"))
    box.systemctl("daemon-reload")
    if story["enabled"]:  # as before the recipes
        box.systemctl("enable", *story["enabled"])
    assert box.run("ls", "/run/netns", check=False).stdout.split() == []
    left = box.systemctl("list-units", "--all", "--plain", "--no-legend", "netmux*",
                         check=False).stdout  # fmt: skip
    assert left.strip() == "", left
    assert (root / "etc" / "group").read_text() == story["group"]
    before, after = story["before"], files(root)
    added = sorted(p for p in set(after) - set(before) if not p.startswith(VOLATILE))
    removed = sorted(p for p in set(before) - set(after) if not p.startswith(VOLATILE))
    assert not added, f"left behind after purge: {added[:20]}"
    assert not removed, f"removed by install + purge: {removed[:20]}"
