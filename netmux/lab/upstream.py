"""The lab's simulated ISP / home router, inside the lab's router namespace.

Everything a home network gives mux, on documentation addresses only:

- kea-dhcp6 on the router's link delegates lab.prefix (a /64 out of the router's /56,
  the way the original author's router leases /64s from its delegation) to mux's dhcpcd;
  `renumber(host, new)` restarts kea with another /64 (renumbering, for tests/benches);
- radvd on the router's link: M/O flags, a default route, RDNSS;
- busybox udhcpd: IPv4 for the uplink by DHCP (192.0.2.0/24, router 192.0.2.1), so NAT64
  can masquerade behind it;
- an IPv4-only web server (busybox httpd) at 203.0.113.80 (on the router's loopback);
- DNS for the test zone `isp.test.` (unbound with local-data, authoritative in effect) at
  2001:db8::53 and 192.0.2.1: `v4only.isp.test.` has only an A record.

Daemons are supervised (netmux.lab.supervise) in the lab's daemon directory, so `lab down`
stops them with the rest. Pure renderers (`kea_config`, `radvd_config`, `udhcpd_config`,
`dns_config`) are unit-tested; `up`/`renumber` are the thin edges.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path

from .. import journal
from ..config import HostConfig
from ..errors import StateError, UsageError
from . import supervise

ZONE = "isp.test"
MUX_LL = IPv6Interface("fe80::2/64")  # mux's address on the ISP link (lab.py gives it)
DNS6 = IPv6Interface("2001:db8::53/64")
ROUTER4 = IPv4Interface("192.0.2.1/24")
POOL4 = (IPv4Address("192.0.2.100"), IPv4Address("192.0.2.199"))
WEB4 = IPv4Address("203.0.113.80")
PAGE = "hello from an IPv4-only web server\n"
# Leases (lab.pd_*_lifetime) are renewed every RENEW seconds so that a new delegation
# (renumber) reaches mux within that time — the lab's stand-in for an ISP changing the
# prefix at the next renewal (kea sends no Reconfigure; dhcpcd 9.4.1 renews DHCPv6 neither
# on SIGUSR1 nor reliably on `dhcpcd -N` under privsep).
RENEW, REBIND = 2, 3
DAEMONS = ("kea6", "upstream-radvd", "udhcpd", "httpd", "upstream-dns", "public-dns")
# The lab's "public DNS": Knot serving dns.domain as the parent zone, accepting delegation
# updates (netmux.delegation) with the key in RUN/public-dns/delegation.key.
PUBLIC_DNS = IPv6Interface("2001:db8::54/64")


@dataclass(frozen=True)
class Plan:
    """What the upstream serves, derived from the host config's [lab] section."""

    link: str
    netns: str
    delegated: IPv6Network  # the /64 kea hands out
    lan: IPv6Network  # the router's own link prefix (router_address's network)
    mux_ll: IPv6Address  # mux's link-local on the cable: the return route's next hop
    preferred: int = 7200  # the delegation's lifetimes (lab.pd_*_lifetime)
    valid: int = 14400

    @property
    def dns6(self) -> IPv6Address:
        return DNS6.ip


def plan(host: HostConfig, delegated: IPv6Network | None = None) -> Plan:
    lab = host.lab
    return Plan(
        link=lab.router_link,
        netns=lab.router_netns,
        delegated=delegated or lab.prefix,
        lan=lab.router_address.network,
        mux_ll=MUX_LL.ip,
        preferred=lab.pd_preferred_lifetime,
        valid=lab.pd_valid_lifetime,
    )


# --- pure renderers -----------------------------------------------------------------------


def kea_config(p: Plan, run_dir: Path) -> str:
    """kea-dhcp6: one subnet on the router's link, a pd-pool of exactly the delegated /64.

    server-id is given (kea would otherwise persist a DUID under /var/lib/kea), leases
    live in memory only, and socket binding is retried while the link-local is tentative.
    The control socket lives in `kea_socket_dir(run_dir)`: kea >= 2.6 accepts one only
    under /run/kea or under $KEA_CONTROL_SOCKET_DIR (start_kea sets it).
    """
    conf = {
        "Dhcp6": {
            "interfaces-config": {
                "interfaces": [p.link],
                "service-sockets-max-retries": 50,
                "service-sockets-retry-wait-time": 100,
            },
            "server-id": {
                "type": "EN",
                "enterprise-id": 2495,
                "identifier": "6e65746d7578",
                "persist": False,
            },
            "lease-database": {"type": "memfile", "persist": False},
            "control-socket": {"socket-type": "unix", "socket-name": str(kea_socket(run_dir))},
            "preferred-lifetime": p.preferred,
            "valid-lifetime": p.valid,
            "renew-timer": RENEW,
            "rebind-timer": REBIND,
            "subnet6": [
                {
                    "id": 1,
                    "subnet": str(p.lan),
                    "interface": p.link,
                    "rapid-commit": True,
                    "pd-pools": [
                        {
                            "prefix": str(p.delegated.network_address),
                            "prefix-len": p.delegated.prefixlen,
                            "delegated-len": p.delegated.prefixlen,
                        }
                    ],
                    "option-data": [{"name": "dns-servers", "data": str(p.dns6)}],
                }
            ],
            "loggers": [
                {
                    "name": "kea-dhcp6",
                    "output_options": [{"output": "stdout"}],
                    "severity": "WARN",
                }
            ],
        }
    }
    return json.dumps(conf, indent=1) + "\n"


def kea_socket_dir(run_dir: Path) -> Path:
    return run_dir / "kea"


def kea_socket(run_dir: Path) -> Path:
    return kea_socket_dir(run_dir) / "kea6.sock"


def radvd_config(p: Plan) -> str:
    """RAs on the router's link: use DHCPv6 (M/O), a default route, no SLAAC for mux."""
    return (
        f"interface {p.link} {{\n"
        "  AdvSendAdvert on;\n"
        "  AdvManagedFlag on;\n"
        "  AdvOtherConfigFlag on;\n"
        "  MinRtrAdvInterval 3;\n"
        "  MaxRtrAdvInterval 10;\n"
        "  AdvDefaultLifetime 1800;\n"
        f"  prefix {p.lan} {{\n"
        "    AdvOnLink on;\n"
        "    AdvAutonomous off;\n"
        "  };\n"
        f"  RDNSS {p.dns6} {{\n"
        "  };\n"
        "};\n"
    )


def udhcpd_config(p: Plan, run_dir: Path) -> str:
    return (
        f"start {POOL4[0]}\nend {POOL4[1]}\ninterface {p.link}\n"
        f"lease_file {run_dir / 'udhcpd.leases'}\npidfile {run_dir / 'udhcpd.pid'}\n"
        f"opt router {ROUTER4.ip}\nopt subnet {ROUTER4.netmask}\nopt dns {ROUTER4.ip}\n"
        "opt lease 3600\n"
    )


def dns_config(p: Plan, run_dir: Path, parent: str | None = None) -> str:
    """unbound answering the test zone from local data (the upstream's DNS) and resolving
    `parent` (the lab's public DNS zone) and everything delegated from it."""
    z = ZONE
    stub = (
        f'  local-zone: "{parent}." nodefault\n  domain-insecure: "{parent}."\n' if parent else ""
    )
    tail = f'stub-zone:\n  name: "{parent}."\n  stub-addr: {PUBLIC_DNS.ip}\n' if parent else ""
    return (
        "server:\n"
        f"  interface: {p.dns6}\n  interface: {ROUTER4.ip}\n"
        '  ip-freebind: yes\n  do-daemonize: no\n  chroot: ""\n  username: ""\n'
        f'  directory: "{run_dir}"\n  pidfile: "{run_dir / "upstream-dns.pid"}"\n'
        '  use-syslog: no\n  logfile: ""\n  num-threads: 1\n'
        "  access-control: ::/0 allow\n  access-control: 0.0.0.0/0 allow\n"
        f'  local-zone: "{z}." static\n'
        f'  local-data: "{z}. 60 IN SOA ns.{z}. hostmaster.{z}. 1 3600 600 86400 60"\n'
        f'  local-data: "{z}. 60 IN NS ns.{z}."\n'
        f'  local-data: "ns.{z}. 60 IN AAAA {p.dns6}"\n'
        f'  local-data: "v4only.{z}. 60 IN A {WEB4}"\n'
        f'  local-data: "router.{z}. 60 IN AAAA {p.lan.network_address + 1}"\n'
        f'  local-data: "router.{z}. 60 IN A {ROUTER4.ip}"\n'
        + stub
        + "remote-control:\n  control-enable: no\n"
        + tail
    )


# --- edges --------------------------------------------------------------------------------


def _ip(netns: str, *args: str) -> None:
    r = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise StateError(f"upstream: `ip -n {netns} {' '.join(args)}` failed: {r.stderr.strip()}")


def available() -> bool:
    """kea-dhcp6 (server) and dhcpcd (client) make PD possible; without them the lab
    keeps its static prefix."""
    return all(shutil.which(b) for b in ("kea-dhcp6", "dhcpcd", "radvd", "unbound"))


def _write(path: Path, text: str) -> bool:
    """Write if different; True when it changed."""
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def addresses_up(host: HostConfig, p: Plan) -> None:
    # kea binds the link's first link-local: drop the kernel's tentative one (DAD costs a
    # second) so it binds the lab's fixed fe80::1 (nodad) at once.
    subprocess.run(["ip", "-n", p.netns, "-6", "addr", "flush", "dev", p.link, "scope", "link",
                    "tentative"], capture_output=True, check=False)  # fmt: skip
    _ip(p.netns, "-6", "addr", "replace", str(DNS6), "dev", p.link, "nodad")
    _ip(p.netns, "-4", "addr", "replace", str(ROUTER4), "dev", p.link)
    _ip(p.netns, "-4", "addr", "replace", f"{WEB4}/32", "dev", "lo")
    _ip(p.netns, "-6", "route", "replace", str(p.delegated), "via", str(p.mux_ll), "dev", p.link)


def start_kea(host: HostConfig, p: Plan, run: Path) -> supervise.Daemon:
    conf = run / "kea-dhcp6.conf"
    if _write(conf, kea_config(p, run)):
        supervise.stop("kea6", run)
    return run_kea(conf, p.netns, run)


def run_kea(conf: Path, netns: str, run: Path) -> supervise.Daemon:
    """kea-dhcp6 on `conf` in `netns` (supervised; a no-op while it runs)."""
    return supervise.start("kea6", ["kea-dhcp6", "-c", str(conf)], netns, run, env=kea_env(run))


def kea_env(run: Path) -> dict[str, str]:
    """kea's environment for files under `run` (its socket directory is made here).

    kea >= 2.6 refuses a control socket outside its own directory unless
    KEA_CONTROL_SOCKET_DIR names one, and that directory must be mode 0750; kea 2.2
    ignores the variable.
    """
    sock_dir = kea_socket_dir(run)
    sock_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    sock_dir.chmod(0o750)
    return {
        "KEA_PIDFILE_DIR": str(run),
        "KEA_LOCKFILE_DIR": str(run),
        "KEA_CONTROL_SOCKET_DIR": str(sock_dir),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }


def up(host: HostConfig, run: Path, delegated: IPv6Network | None = None) -> Plan:
    """Start the upstream's daemons (idempotent). The router netns and cable must exist.

    `delegated`: what kea hands out instead of lab.prefix, e.g. a /60 of which mux's
    dhcpcd puts one /64 on gw0 (as most home ISPs delegate)."""
    p = plan(host, delegated)
    run.mkdir(parents=True, exist_ok=True)
    addresses_up(host, p)
    start_kea(host, p, run)
    rconf = run / "upstream-radvd.conf"
    rpid = run / "upstream-radvd.daemon.pid"
    if _write(rconf, radvd_config(p)):
        supervise.stop("upstream-radvd", run)
    supervise.start(
        "upstream-radvd",
        ["radvd", "--nodaemon", "-m", "stderr", "-C", str(rconf), "-p", str(rpid)],
        p.netns,
        run,
        pidfile=rpid,
    )
    if shutil.which("busybox"):
        uconf = run / "udhcpd.conf"
        (run / "udhcpd.leases").touch()
        if _write(uconf, udhcpd_config(p, run)):
            supervise.stop("udhcpd", run)
        supervise.start("udhcpd", ["busybox", "udhcpd", "-f", str(uconf)], p.netns, run)
        www = run / "www"
        www.mkdir(exist_ok=True)
        _write(www / "index.html", PAGE)
        supervise.start(
            "httpd", ["busybox", "httpd", "-f", "-p", f"{WEB4}:80", "-h", str(www)], p.netns, run
        )
    parent = public_dns_up(host, p, run)
    dconf = run / "upstream-dns.conf"
    if _write(dconf, dns_config(p, run, parent)):
        supervise.stop("upstream-dns", run)
    supervise.start("upstream-dns", ["unbound", "-d", "-c", str(dconf)], p.netns, run)
    journal.info(
        f"upstream: delegating {p.delegated}, DNS {p.dns6} ({ZONE}.), IPv4 web {WEB4}",
        netns=p.netns,
        prefix=str(p.delegated),
    )
    return p


def public_dns_key(run: Path) -> Path:
    return run / "public-dns" / "delegation.key"


def public_dns_up(host: HostConfig, p: Plan, run: Path) -> str | None:
    """Knot in the router namespace (the lab's internet) serving dns.domain as the parent
    of the host zone; returns that zone, or None without knotd."""
    if not shutil.which("knotd"):
        return None
    import secrets

    from .. import delegation
    from ..phonebook.sinks import TsigKey, render_tsig_key

    zone = delegation.parent_zone(host)
    d = run / "public-dns"
    for sub in ("zones", "db", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    key = public_dns_key(run)
    if not key.exists():
        key.write_text(render_tsig_key(TsigKey(delegation.KEY_NAME, "hmac-sha256",
                                               secrets.token_bytes(32))))  # fmt: skip
        key.chmod(0o600)
    _ip(p.netns, "-6", "addr", "replace", str(PUBLIC_DNS), "dev", p.link, "nodad")
    conf = d / "knot.conf"
    text = delegation.parent_knot_conf(zone, str(d), [f"{PUBLIC_DNS.ip}@53"], str(key))
    if _write(conf, text):
        supervise.stop("public-dns", run)
    _write(d / "zones" / f"{zone}.zone", delegation.parent_zone_file(zone, str(PUBLIC_DNS.ip)))
    supervise.start("public-dns", ["knotd", "-c", str(conf)], p.netns, run)
    return zone


def renumber(host: HostConfig, run: Path, new: IPv6Network, mode: str = "reload") -> Plan:
    """The ISP delegates `new` instead: kea gets a config with the new pool (reloaded
    through its control socket, same process; or restarted), the return route follows.
    At dhcpcd's next renewal (every RENEW s) kea answers the old prefix with lifetimes 0
    and hands out the new one; the dhcpcd hook (renumber.py) then deprecates the old."""
    cur = run / "kea-dhcp6.conf"
    text = cur.read_text() if cur.exists() else ""
    p = plan(host, new)
    cur.write_text(keep_other_subnets(kea_config(p, run), text))
    if text:
        for pool in json.loads(text)["Dhcp6"]["subnet6"][0]["pd-pools"]:
            gone = IPv6Network(f"{pool['prefix']}/{pool['prefix-len']}")
            subprocess.run(["ip", "-n", p.netns, "-6", "route", "del", str(gone)],
                           capture_output=True, check=False)  # fmt: skip
    addresses_up(host, p)
    if mode == "reload":
        kea_command(kea_socket(run), "config-reload")
    else:
        supervise.stop("kea6", run)
        run_kea(cur, p.netns, run)  # not start_kea: it would write host 1's subnet alone
    return p


def keep_other_subnets(new: str, old: str) -> str:
    """kea config `new` (host 1's subnet, id 1) with every other subnet of `old` kept, and
    the interfaces they serve: with several hosts (netmux/lab/multihost.py) the further
    hosts' delegations outlive host 1's renumbering. Pure."""
    if not old:
        return new
    conf, before = json.loads(new), json.loads(old)["Dhcp6"]
    dh = conf["Dhcp6"]
    dh["subnet6"] += [s for s in before["subnet6"] if s.get("id") != 1]
    names = dh["interfaces-config"]["interfaces"]
    for name in before["interfaces-config"]["interfaces"]:
        if name not in names:
            names.append(name)
    return json.dumps(conf, indent=1) + "\n"


def delegated(run: Path) -> IPv6Network | None:
    """The /64 the lab's kea delegates now (its config), None when no kea was set up."""
    try:
        pool = json.loads((run / "kea-dhcp6.conf").read_text())["Dhcp6"]["subnet6"][0]
        first = pool["pd-pools"][0]
        return IPv6Network(f"{first['prefix']}/{first['prefix-len']}")
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def flash_renumber(host: HostConfig, run: Path, new: IPv6Network | None = None) -> Plan:
    """A rebooted home router: kea restarts without its (in-memory) leases and delegates
    `new` (default: the /64 after the current one); nothing is released or reconfigured.
    mux learns it at dhcpcd's next renewal (RENEW s in the lab, T1 on a real link): kea
    has no binding for the old prefix and answers with the new one."""
    old = delegated(run)
    if old is None or supervise.status("kea6", run) is None:
        raise StateError(f"lab renumber: no lab kea runs in {run}; run `netmux lab up` first")
    others = _other_hosts_prefixes(run)  # a lab with several hosts: theirs stay theirs
    if new is None:
        new = IPv6Network((int(old.network_address) + (1 << 64), 64))
        while new in others:
            new = IPv6Network((int(new.network_address) + (1 << 64), 64))
    if (new.prefixlen != 64 or new == old or new in others
            or new.overlaps(host.lab.router_address.network)):  # fmt: skip
        taken = "".join(f", {o}" for o in others)
        raise UsageError(
            f"lab renumber: {new} is not allowed; a /64 other than the current {old}{taken} "
            f"and the router's own {host.lab.router_address.network}"
        )
    p = renumber(host, run, new, mode="restart")
    journal.info(
        f"lab: router rebooted, delegating {new} instead of {old} (no release)",
        netns=p.netns,
        prefix=str(new),
    )
    return p


def _other_hosts_prefixes(run: Path) -> list[IPv6Network]:
    """The /64s the lab's kea delegates to further hosts (subnets other than host 1's)."""
    try:
        subnets = json.loads((run / "kea-dhcp6.conf").read_text())["Dhcp6"]["subnet6"]
        return [IPv6Network(f"{pool['prefix']}/{pool['prefix-len']}")
                for s in subnets if s.get("id") != 1 for pool in s["pd-pools"]]  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return []


def kea_command(sock_path: Path, command: str, timeout: float = 5.0) -> dict[str, object]:
    """One command on kea's control socket; StateError unless kea answers result 0."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(sock_path))
            s.sendall(json.dumps({"command": command}).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                try:
                    answer = json.loads(data)
                    break
                except ValueError:
                    continue
        except OSError as e:
            raise StateError(f"upstream: kea control socket {sock_path}: {e}") from None
    if not isinstance(answer, dict) or answer.get("result") != 0:
        raise StateError(f"upstream: kea {command} failed: {answer}")
    return answer


# --- the whole upstream side of the lab ---------------------------------------------------


def resolver_name(host: HostConfig) -> str:
    """The lab's resolver workload: "resolver", or derived from mux's name in tests."""
    if host.mux.netns == "mux":
        return "resolver"
    return (host.mux.netns[:11] + "dns").lower()


def resolver_host(host: HostConfig) -> HostConfig:
    """The lab's resolver also knows the upstream's test zone (a stub zone to its DNS)."""
    import dataclasses

    stub = f"{ZONE}={DNS6.ip}"
    stubs = host.resolver.stubs if stub in host.resolver.stubs else (*host.resolver.stubs, stub)
    return dataclasses.replace(host, resolver=dataclasses.replace(host.resolver, stubs=stubs))


def wait_prefix(
    host: HostConfig, want: IPv6Network | None, timeout: float = 10.0, run: Path | None = None
) -> float:
    """Seconds until `want` (or any global /64) is on mux's gateway; StateError on timeout
    (naming kea6 or dhcpcd first when one of them, started in `run`, has died)."""
    import time

    from .. import renumber

    t0 = time.monotonic()
    while True:
        got = renumber.gateway_prefixes(host.mux.gateway, host.mux.netns)
        if (want in got) if want else got:
            return time.monotonic() - t0
        dead = supervise.not_running(("kea6", "dhcpcd"), run) if run else []
        if dead or time.monotonic() - t0 > timeout:
            where = f"the dhcpcd and kea6 logs in {run}" if run else "the dhcpcd and kea6 logs"
            raise StateError(
                f"upstream: no delegated prefix on {host.mux.netns}/{host.mux.gateway} after "
                f"{time.monotonic() - t0:.1f}s (have {[str(g) for g in got]}): "
                + ("; ".join(dead) if dead else f"see {where}")
            )
        time.sleep(0.02)


def lab_up(host: HostConfig, run: Path) -> dict[str, float]:
    """Upstream daemons, dhcpcd's PD onto gw0 (waited for), IPv4 and NAT64 in mux.

    radvd in mux must already run (its conf/pid in `run`): the dhcpcd hook re-renders and
    SIGHUPs it when the prefix arrives or changes. Returns timings (seconds).
    """
    import time

    from . import uplink

    config_path = Path(host.source) if Path(host.source).is_file() else None
    t: dict[str, float] = {}
    t0 = time.monotonic()
    p = up(host, run)
    t["upstream"] = time.monotonic() - t0
    t1 = time.monotonic()
    uplink.start_dhcpcd(
        host, run, [host.lab.uplink], run / "radvd.conf", run / "radvd.daemon.pid", config_path
    )
    from .. import nat64

    if host.nat64.enabled and nat64.engine(host).name != "none":
        uplink.nat64_up(host, run)
    wait_prefix(host, p.delegated, run=run)
    t["pd"] = time.monotonic() - t1
    # The DHCPv4 lease (for NAT64) follows ~2 s after dhcpcd starts (dhcpcd delays its
    # first DISCOVER); not waited for here so that `lab up` stays fast: wait_ipv4().
    return t


def wait_ipv4(host: HostConfig, timeout: float = 10.0) -> float:
    """Seconds until mux has an IPv4 default route (the DHCPv4 lease NAT64 needs)."""
    import time

    t0 = time.monotonic()
    argv = ["ip", "-n", host.mux.netns, "-4", "route", "show", "default"]
    while not subprocess.run(argv, capture_output=True, text=True).stdout.strip():
        if time.monotonic() - t0 > timeout:
            raise StateError(
                f"upstream: no IPv4 lease in {host.mux.netns} after {timeout:g}s; "
                "see the dhcpcd and udhcpd logs"
            )
        time.sleep(0.02)
    return time.monotonic() - t0


def resolver_up(host: HostConfig, run: Path) -> str:
    """The resolver workload (DNS64 unbound at resolver.address, a stub zone for the
    upstream's test zone); returns its name. Separate from lab_up: it is a workload, so
    it shows in `netmux ls`, and only demos and DNS64 tests need it."""
    from .. import config, daemons, state, workload
    from ..render import unbound as unbound_render

    name = resolver_name(host)
    wl = config.workload_from(
        name,
        {
            "addresses": [f"{host.resolver.address}/64"],
            "ports": ["udp/53", "tcp/53"],
            "publish": False,
        },
    )
    if (state.read_state(host, name) or {}).get("phase") != "up":
        workload.up(host, wl, exec_cmd=False)
    rdir = run / "resolver"
    rdir.mkdir(exist_ok=True)
    conf = rdir / "unbound.conf"
    conf.write_text(unbound_render.render(resolver_host(host), daemons.unbound(), rdir))
    supervise.start("resolver", ["unbound", "-d", "-c", str(conf)], name, run)
    return name


def lab_down(host: HostConfig, run: Path) -> None:
    """Undo lab_up's pieces that outlive `supervise.stop` (the resolver's namespace)."""
    from .. import workload
    from . import uplink

    supervise.stop("resolver", run)
    workload.down(host, resolver_name(host))
    uplink.nat64_down(host, run)
    uplink.stop_dhcpcd(run)
    for name in DAEMONS:
        supervise.stop(name, run)
    for sub in ("dhcpcd-run", "dhcpcd-state", "resolver", "tayga-data", "www", "public-dns"):
        shutil.rmtree(run / sub, ignore_errors=True)
