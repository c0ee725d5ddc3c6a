"""`netmux lab up --hosts 2` (netmux/lab/multihost.py), for real: two netmux hosts behind the lab
router, each with its own Knot and phonebookd, host 1 the primary; a workload's name on
host 2 is answered to a workload on host 1 and, through the vps secondary, to the internet;
host 2 switched off → its names gone (the lab's 2 s lease); on again → back; `lab down`
leaves nothing (the leak check of tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from netmux import config
from netmux.config import HostConfig
from netmux.lab import multihost as labhosts
from tests.conftest import RUN
from tests.hostsfix import until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.requires("knotd", "knotc", "dig", "unbound", "radvd", "busybox"),
]

WAIT = 30.0  # a generous bound for the lab's LEASE + EXPIRE_EVERY: no timing asserts here


@pytest.fixture
def base(tmp_config: Callable[..., Path], uname: Callable[[str], str]) -> Iterator[HostConfig]:
    """A lab config named for this run (host a, domain example.org); `lab down --force`
    after the test, whatever happened."""
    path = tmp_config(
        f'[lab]\nrouter_netns = "{uname("rt")}"\nuplink = "{RUN}ulab"\n'
        '[dns]\nhostname = "a"\ndomain = "example.org"\n[nat64]\nenabled = false\n'
    )
    host = config.load_host(path)
    try:
        yield host
    finally:
        cli(host, "lab", "down", "--force")


def cli(cfg: HostConfig, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "netmux.cli", "--config", cfg.source, *args]
    return subprocess.run(argv, capture_output=True, text=True)


def published(cfg: HostConfig, name: str, fqdn: str) -> str:
    """The workload's global address once phonebookd has published `fqdn`, else ""."""
    r = cli(cfg, "status", name, "--json")
    if r.returncode != 0:
        return ""
    st = json.loads(r.stdout)
    return st["addresses"]["global"][0].split("/")[0] if fqdn in st.get("dns", []) else ""


def test_a_name_on_host_2_from_host_1_and_the_internet_gone_when_off_back_when_on(
    base: HostConfig,
    uname: Callable[[str], str],
    procs: Callable[..., subprocess.Popen[bytes]],
) -> None:
    r = cli(base, "lab", "up", "--hosts", "2")
    assert r.returncode == 0, r.stderr
    h1, h2 = (config.load_host(labhosts.config_path(base, i)) for i in (1, 2))
    assert (h1.hosts.role, h2.hosts.role) == ("primary", "member")
    assert (h1.dns.hostname, h2.dns.hostname) == ("a", "b")
    assert h2.lab.prefix != h1.lab.prefix and h2.mux.netns != h1.mux.netns
    web, app = uname("web"), uname("app")
    for cfg, name in ((h2, web), (h1, app)):  # a command holds each one's DNS lifeline
        argv = [sys.executable, "-m", "netmux.cli", "--config", cfg.source, "-q", "up", name,
                "--", "sleep", "600"]  # fmt: skip
        procs(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fqdn = f"{web}.b.example.org"
    until(f"{fqdn} published on host 2", lambda: bool(published(h2, web, fqdn)), WAIT)
    addr = published(h2, web, fqdn)
    assert addr.startswith(str(h2.lab.prefix.network_address)[:-1]), addr  # host 2's /64
    primary, inet = h2.hosts.primary, labhosts.inet_netns(base)
    vps, resolver = str(labhosts.INET_LINK[0].ip), str(labhosts.INET_LINK[1].ip)

    def at_primary() -> str:  # from the workload on host 1
        return labhosts.answers(app, primary, fqdn)

    def at_secondary() -> str:  # from the internet, the vps's Knot
        return labhosts.answers(inet, vps, fqdn)

    until("host 1's workload gets host 2's name", lambda: at_primary() == addr, WAIT)
    until("the internet gets it from the secondary", lambda: at_secondary() == addr, WAIT)
    until(
        "and through the internet's resolver",
        lambda: labhosts.answers(inet, resolver, fqdn, recurse=True) == addr,
        WAIT,
    )

    r = cli(base, "lab", "off", "2")
    assert r.returncode == 0, r.stderr
    until("gone at the primary (the lease lapsed)", lambda: at_primary() == "", WAIT)
    until("gone at the secondary", lambda: at_secondary() == "", WAIT)
    rows = json.loads(
        labhosts.run_in(
            [sys.executable, "-m", "netmux.cli", "--config", h1.source, "host", "list", "--json"],
            h1.mux.netns,
        )
    )
    assert {r["host"]: r["state"] for r in rows} == {"a": "primary", "b": "expired"}, rows

    r = cli(base, "lab", "on", "2")
    assert r.returncode == 0, r.stderr
    until("back at the primary", lambda: at_primary() == addr, WAIT)
    until("back at the secondary", lambda: at_secondary() == addr, WAIT)

    r = cli(base, "lab", "down", "--force")
    assert r.returncode == 0, r.stderr
    for ns in (h1.mux.netns, h2.mux.netns, base.lab.router_netns, inet, web, app):
        assert not Path("/run/netns", ns).exists(), ns
    assert not labhosts.state_dir(base).exists()


def test_renumbering_host_1_keeps_the_other_hosts_delegations(base: HostConfig) -> None:
    """`lab renumber` (a router reboot: kea restarted with host 1's new /64) with several
    hosts: the running kea still delegates host 2's /64 on host 2's cable."""
    from netmux.lab import daemon_dir, upstream

    r = cli(base, "lab", "up", "--hosts", "2")
    assert r.returncode == 0, r.stderr
    h2 = config.load_host(labhosts.config_path(base, 2))
    r = cli(base, "lab", "renumber")
    assert r.returncode == 0, r.stderr
    got = upstream.kea_command(upstream.kea_socket(daemon_dir(base)), "config-get")
    subnets = got["arguments"]["Dhcp6"]["subnet6"]  # type: ignore[index]
    pools = {s["id"]: s["pd-pools"][0]["prefix"] for s in subnets}
    assert pools[2] == str(h2.lab.prefix.network_address), pools
    assert pools[1] != str(base.lab.prefix.network_address) and r.stdout.startswith(pools[1])
    assert pools[1] != pools[2]  # the next /64 after host 1's was host 2's: skipped
    r = cli(base, "lab", "renumber", str(h2.lab.prefix))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and str(h2.lab.prefix) in r.stderr, r.stderr


def test_the_hosts_demo_runs_and_leaves_nothing(
    tmp_path: Path, uname: Callable[[str], str]
) -> None:
    """docs/examples/hosts-demo.sh (`make demo-hosts`) with this run's names: every step
    passes (it exits non-zero on the first that does not) and it cleans up after itself."""
    root, router = tmp_path / "demo", uname("rt")
    cfg = tmp_path / "hosts-demo.toml"
    cfg.write_text(
        f'[mux]\nnetns = "{uname("mux")}"\nuplinks = ["{RUN}u*"]\n'
        f'[lab]\nrouter_netns = "{router}"\nuplink = "{RUN}ulab"\n'
        '[dns]\nhostname = "a"\ndomain = "example.org"\n[nat64]\nenabled = false\n'
        f'[paths]\nstate_dir = "{root}/state"\nrun_dir = "{root}/run"\n'
        f'workloads_dir = "{root}/workloads"\n'
    )
    env = {
        **os.environ,
        "NETMUX": str(Path(sys.executable).parent / "netmux"),
        "NETMUX_CONFIG": str(cfg),
        "HOSTS_DEMO_ROOT": str(root),
        "HOSTS_DEMO_ROUTER": router,
        "HOSTS_DEMO_WEB": uname("web"),
        "HOSTS_DEMO_APP": uname("app"),
    }
    script = Path(__file__).resolve().parents[2] / "docs" / "examples" / "hosts-demo.sh"
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:]
    for line in ("(no answer)", "hello from", "nothing left behind", "hosts demo finished"):
        assert line in r.stdout, r.stdout[-4000:]
    assert not root.exists()


def test_off_and_on_need_a_lab_with_several_hosts(base: HostConfig) -> None:
    r = cli(base, "lab", "off", "2")
    assert r.returncode != 0 and "lab up --hosts 2" in r.stderr, r.stderr


# --- the pure parts ------------------------------------------------------------------------


@pytest.mark.unit
def test_generated_configs_give_each_host_its_own_mux_cable_prefix_and_role(
    tmp_config: Callable[..., Path],
) -> None:
    import tomllib

    path = tmp_config('[dns]\nhostname = "a"\ndomain = "example.org"\n[nat64]\nenabled = false\n')
    base = config.load_host(path)
    table = tomllib.loads(path.read_text())
    primary = labhosts.IPv6Address("2001:db8:0:1::1")
    t1, t2, t3 = (labhosts.host_table(table, base, i, primary) for i in (1, 2, 3))
    assert t1["mux"] == table["mux"] and t1["paths"] == table["paths"]  # host 1 is the lab
    assert t1["hosts"]["role"] == "primary" and t1["hosts"]["lease"] == labhosts.LEASE
    assert t1["hosts"]["secondaries"] == [str(labhosts.VPS_LINK[1].ip)]
    assert [t["dns"]["hostname"] for t in (t1, t2, t3)] == ["a", "b", "c"]
    assert (t2["hosts"]["role"], t2["hosts"]["primary"]) == ("member", "2001:db8:0:1::1")
    assert t2["lab"]["prefix"] == "2001:db8:0:2::/64" and t3["lab"]["prefix"] == "2001:db8:0:3::/64"
    assert len({t["mux"]["netns"] for t in (t1, t2, t3)}) == 3
    assert len({base.lab.uplink, t2["lab"]["uplink"], t3["lab"]["uplink"]}) == 3
    assert (t2["uplink"]["pd_iaid"], t3["uplink"]["pd_iaid"]) == (2, 3)
    for i, t in ((1, t1), (2, t2), (3, t3)):  # each loads as a valid netmux.toml
        p = path.parent / f"h{i}.toml"
        p.write_text(labhosts.dump_toml(t))
        assert tomllib.loads(p.read_text()) == t
        cfg = config.load_host(p)
        assert cfg.hosts.role == ("primary" if i == 1 else "member")
        assert i == 1 or config.uplink_matches(cfg.mux, cfg.lab.uplink)  # its own NIC


@pytest.mark.unit
def test_hostnames_after_a_one_letter_name_are_letters_else_numbered(
    tmp_config: Callable[..., Path],
) -> None:
    for name, want in (("a", ["a", "b", "c"]), ("box", ["box", "box2", "box3"])):
        base = config.load_host(tmp_config(f'[dns]\nhostname = "{name}"\n'))
        assert [labhosts.hostname(base, i) for i in (1, 2, 3)] == want


@pytest.mark.unit
def test_kea_gets_one_subnet_per_further_host_on_its_cable(
    tmp_config: Callable[..., Path], tmp_path: Path
) -> None:
    import tomllib

    from netmux.lab import upstream

    path = tmp_config('[dns]\nhostname = "a"\n[nat64]\nenabled = false\n')
    base = config.load_host(path)
    table = tomllib.loads(path.read_text())
    others = []
    for i in (2, 3):
        p = tmp_path / f"h{i}.toml"
        primary = labhosts.IPv6Address("2001:db8:0:1::1")
        p.write_text(labhosts.dump_toml(labhosts.host_table(table, base, i, primary)))
        others.append(config.load_host(p))
    one = upstream.kea_config(upstream.plan(base), tmp_path)
    text = labhosts.kea_config(one, others, tmp_path)
    dh = json.loads(text)["Dhcp6"]
    assert dh["interfaces-config"]["interfaces"] == ["lan0", "lan0h2", "lan0h3"]
    got = {
        s["id"]: (s["interface"], s["subnet"], s["pd-pools"][0]["prefix"]) for s in dh["subnet6"]
    }
    assert got == {
        1: ("lan0", "2001:db8::/64", "2001:db8:0:1::"),
        2: ("lan0h2", "2001:db8:ff:2::/64", "2001:db8:0:2::"),
        3: ("lan0h3", "2001:db8:ff:3::/64", "2001:db8:0:3::"),
    }
    assert labhosts.kea_config(text, others, tmp_path) == text  # idempotent
    # `lab renumber` gives host 1 another /64; the further hosts keep their subnets.
    new = upstream.plan(base, IPv6Network("2001:db8:0:9::/64"))
    renum = json.loads(upstream.keep_other_subnets(upstream.kea_config(new, tmp_path), text))
    dh = renum["Dhcp6"]
    assert dh["interfaces-config"]["interfaces"] == ["lan0", "lan0h2", "lan0h3"]
    assert {s["id"]: s["pd-pools"][0]["prefix"] for s in dh["subnet6"]} == {
        1: "2001:db8:0:9::",
        2: "2001:db8:0:2::",
        3: "2001:db8:0:3::",
    }
