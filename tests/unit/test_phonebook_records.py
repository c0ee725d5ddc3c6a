"""Pure phonebook logic: records from addresses, tinydns data, Knot config, TSIG keys, the
publish socket's request parser, the fd store's LISTEN_FDS parsing; hypothesis throws
arbitrary names and payloads at every entry point: nothing unvalidated gets through."""

from __future__ import annotations

import os
import re
import subprocess
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netmux import ifaddr
from netmux.config import parse_host
from netmux.errors import ConfigError, StateError, UsageError
from netmux.phonebook import errors, knot, publish_socket
from netmux.phonebook import records as r
from netmux.phonebook.checks import check_ifname, check_netns_name
from netmux.phonebook.sinks import Rfc2136Sink, TsigKey, parse_tsig_key, render_tsig_key

pytestmark = pytest.mark.unit

CFG = parse_host(
    '[dns]\nhostname = "box"\ndomain = "example.org"\nttl = 30\n'
    '[phonebook]\nreverse = ["2001:db8:1::/64"]\n'
)
Z = r.Zones.from_config(CFG)
A = r.parse_address

# Every line tinydns-data may see from us: a leading type char and fields of LDH names,
# numbers, IPv4 addresses, or octal escapes — never a stray ':' or newline or backslash.
NAME = r"[a-z0-9.-]+"
SAFE_LINE = re.compile(
    rf"^(Z{NAME}:{NAME}:{NAME}::16384:2048:1048576:2560:\d+"
    rf"|&{NAME}::{NAME}:\d+"
    rf"|\+{NAME}:\d+\.\d+\.\d+\.\d+:\d+"
    rf"|:{NAME}:28:(\\[0-3][0-7][0-7]){{16}}:\d+"
    rf"|\^{NAME}:{NAME}:\d+)$"
)


def test_zones_from_config() -> None:
    assert Z.public == "box.example.org"
    assert Z.internal == "internal"
    assert Z.ns == "dns.box.example.org"
    assert Z.reverse == (IPv6Network("fd64:cafe::/64"), IPv6Network("2001:db8:1::/64"))
    assert Z.zone_of("a.box.example.org") == "box.example.org"
    assert Z.zone_of("a.internal") == "internal"
    assert Z.zone_of("example.org") is None
    assert Z.zone_of(IPv6Address("2001:db8:1::5").reverse_pointer) == r.reverse_zone(
        IPv6Network("2001:db8:1::/64")
    )


def test_global_ula_ipv4_and_ptr() -> None:
    recs = r.publication_records(
        "httpd",
        ["www"],
        [A("2001:db8:1::5", 64), A("fd64:cafe::5", 64), A("192.0.2.7", 24), A("10.1.2.3", 8)],
        Z,
    )
    got = {(x.name, x.rtype, x.value) for x in recs}
    assert ("httpd.box.example.org", "AAAA", "2001:db8:1::5") in got
    assert ("www.box.example.org", "AAAA", "2001:db8:1::5") in got
    assert ("httpd.internal", "AAAA", "fd64:cafe::5") in got
    assert ("www.internal", "AAAA", "fd64:cafe::5") in got
    assert ("httpd.box.example.org", "A", "192.0.2.7") in got
    assert ("httpd.internal", "A", "10.1.2.3") in got
    ptrs = {(x.name, x.value) for x in recs if x.rtype == "PTR"}
    assert ptrs == {
        (IPv6Address("2001:db8:1::5").reverse_pointer, "httpd.box.example.org"),
        (IPv6Address("fd64:cafe::5").reverse_pointer, "httpd.internal"),
    }
    assert all(x.ttl == 30 for x in recs)


def test_no_ptr_outside_known_prefixes() -> None:
    recs = r.publication_records("web", [], [A("2001:db8:2::5", 64)], Z)
    assert [x.rtype for x in recs] == ["AAAA"]


@pytest.mark.parametrize(
    "flags",
    [ifaddr.IFA_F_TENTATIVE, ifaddr.IFA_F_DEPRECATED, ifaddr.IFA_F_DADFAILED,
     ifaddr.IFA_F_OPTIMISTIC, ifaddr.IFA_F_TEMPORARY,
     ifaddr.IFA_F_TENTATIVE | ifaddr.IFA_F_OPTIMISTIC],
)  # fmt: skip
def test_unusable_addresses_are_never_published(flags: int) -> None:
    assert r.publication_records("web", [], [A("2001:db8:1::5", 64, flags)], Z) == []


def test_usable_flags_and_scopes() -> None:
    assert A("2001:db8::1", 64, ifaddr.IFA_F_PERMANENT | ifaddr.IFA_F_NODAD).usable
    assert not A("fe80::1", 64).usable
    assert not A("::1", 128).usable
    assert not A("127.0.0.1", 8).usable


def test_duplicate_aliases_and_name_as_alias() -> None:
    pub, internal = r.names_for("web", ["www", "web", "www"], Z)
    assert pub == ["web.box.example.org", "www.box.example.org"]
    assert internal == ["web.internal", "www.internal"]


@pytest.mark.parametrize("bad", ["Web", "w_b", "a:b", "x\ny", "-x", "a.b", "", "all", "a" * 16])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        r.publication_records(bad, [], [A("2001:db8::1", 64)], Z)


@pytest.mark.parametrize("bad", ["Www", "a:b", "x\\y", "a.b", "", "-a", "a" * 64])
def test_bad_aliases_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        r.publication_records("web", [bad], [A("2001:db8::1", 64)], Z)


def test_zone_records_and_reverse_zones() -> None:
    assert (
        r.reverse_zone(IPv6Network("fd64:cafe::/64")) == "0.0.0.0.0.0.0.0.e.f.a.c.4.6.d.f.ip6.arpa"
    )
    assert r.reverse_zone(IPv6Network("2001:db8::/30")) == "b.d.0.1.0.0.2.ip6.arpa"  # /28
    recs = r.zone_records(Z)
    zones = {x.name for x in recs}
    assert zones == {"box.example.org", "internal", *Z.reverse_zones()}
    assert {x.rtype for x in recs} == {"SOA", "NS"}


def test_record_refuses_unsafe_values() -> None:
    with pytest.raises(UsageError):
        r.Record("a.internal", "AAAA", "2001:db8::1:0:0:0:1\n", 5)
    with pytest.raises(UsageError):
        r.Record("a.internal", "A", "1.2.3.4:5", 5)
    with pytest.raises(UsageError):
        r.Record("a.internal:1", "A", "1.2.3.4", 5)
    with pytest.raises(UsageError):
        r.Record("a.internal", "TXT", "x", 5)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        r.Record("a.internal", "PTR", "b.internal\nZevil", 5)


def test_tinydns_lines() -> None:
    recs = r.zone_records(Z) + r.publication_records(
        "web", [], [A("2001:db8:1::5", 64), A("192.0.2.1", 24)], Z
    )
    text = r.render_tinydns(recs)
    lines = text.splitlines()
    assert all(SAFE_LINE.fullmatch(line) for line in lines), lines
    assert (
        ":web.box.example.org:28:\\040\\001\\015\\270\\000\\001\\000\\000"
        "\\000\\000\\000\\000\\000\\000\\000\\005:30" in lines
    )
    assert "+web.box.example.org:192.0.2.1:30" in lines
    assert "&internal::dns.box.example.org:30" in lines
    assert text == r.render_tinydns(reversed(recs)), "sorted and stable"


@pytest.mark.requires("tinydns-data")
def test_tinydns_data_accepts_the_file(tmp_path: Path) -> None:
    recs = r.zone_records(Z) + r.publication_records(
        "web", ["www"], [A("2001:db8:1::5", 64), A("fd64:cafe::9", 64), A("192.0.2.1", 24)], Z
    )
    (tmp_path / "data").write_text(r.render_tinydns(recs))
    subprocess.run(["tinydns-data"], cwd=tmp_path, check=True)
    assert (tmp_path / "data.cdb").stat().st_size > 0


# --- hypothesis: nothing unvalidated reaches a sink --------------------------------------

junk = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=70
)
labelish = st.one_of(junk, st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))


@settings(max_examples=400, deadline=None)
@given(name=labelish, aliases=st.lists(labelish, max_size=3), ip=st.ip_addresses())
def test_fuzzed_publications_render_only_safe_lines(
    name: str, aliases: list[str], ip: object
) -> None:
    try:
        recs = r.publication_records(name, aliases, [r.Address(ip, 64)], Z)  # type: ignore[arg-type]
    except UsageError:
        return
    for line in r.render_tinydns(recs).splitlines():
        assert SAFE_LINE.fullmatch(line), line
    for rec in recs:
        assert rec.name.isascii() and "\n" not in rec.value and ":" not in rec.name


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=600))
def test_fuzzed_seed_requests(data: bytes) -> None:
    try:
        name, ifname, aliases = publish_socket.parse_request(data)
    except ValueError:
        return
    for field in (name, ifname, *aliases):
        assert field and field.isascii() and field.isprintable() and " " not in field
    try:
        check_ifname(ifname)
        recs = r.publication_records(name, aliases, [A("2001:db8::1", 64)], Z)
    except UsageError:
        return
    assert all(SAFE_LINE.fullmatch(line) for line in r.render_tinydns(recs).splitlines())


@settings(max_examples=200, deadline=None)
@given(s=junk)
def test_fuzzed_netns_and_ifnames(s: str) -> None:
    for check in (check_netns_name, check_ifname):
        try:
            out = check(s)
        except UsageError:
            continue
        assert "/" not in out and out not in (".", "..") and out.isascii()


def test_seed_request_examples() -> None:
    assert publish_socket.parse_request(b"httpd eth0\n") == ("httpd", "eth0", [])
    assert publish_socket.parse_request(b"httpd eth0 www api\n") == (
        "httpd",
        "eth0",
        ["www", "api"],
    )
    for bad in (b"httpd eth0", b"httpd\n", b"a  b\n", b"a b\nc d\n", b"a\tb c\n", b"\xff b\n"):
        with pytest.raises(ValueError):
            publish_socket.parse_request(bad)


# --- Knot, TSIG, config, fd store --------------------------------------------------------


def test_tsig_key_roundtrip_and_errors() -> None:
    key = TsigKey("phonebook", "hmac-sha256", os.urandom(32))
    assert parse_tsig_key(render_tsig_key(key), "k") == key
    with pytest.raises(ConfigError, match="algorithm"):
        parse_tsig_key("key:\n  - id: a\n    algorithm: md5\n    secret: AAAA\n", "k")
    with pytest.raises(ConfigError, match="secret"):
        parse_tsig_key("key:\n  - id: a\n    algorithm: hmac-sha256\n", "k")


def test_knot_conf_has_every_zone_and_the_acl(tmp_path: Path) -> None:
    text = knot.render_knot_conf(knot.KnotSite(Z, tmp_path, ["::", "127.0.0.1"], 53))
    for zone in Z.all_zones():
        assert f"  - domain: {zone}.\n" in text
    assert '"::@53", "127.0.0.1@53"' in text
    assert "action: [update, transfer]" in text
    # host-only zones: the module on internal. and the ULA reverse zone, not the public zone
    assert "  - domain: internal.\n    module: mod-queryacl/host-only\n" in text
    ula_rev = r.reverse_zone(CFG.mux.ula.network)
    assert f"  - domain: {ula_rev}.\n    module: mod-queryacl/host-only\n" in text
    assert f"  - domain: {Z.public}.\n  - domain" in text
    assert set(Z.host_only_zones()) == {"internal", ula_rev}
    with pytest.raises(UsageError):
        knot.render_knot_conf(knot.KnotSite(Z, tmp_path, ['::"; evil'], 53))
    zone = knot.render_zone(Z, "internal")
    assert "@ SOA dns.box.example.org. hostmaster.box.example.org." in zone


@pytest.mark.requires("knotc")
def test_knot_accepts_generated_config(tmp_path: Path) -> None:
    site = knot.KnotSite(Z, tmp_path, ["::1"], 5353)
    knot.write_all(site)
    out = subprocess.run(
        ["knotc", "-c", str(tmp_path / "knot.conf"), "conf-check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "phonebook.key").stat().st_mode & 0o077 == 0o040
    key = parse_tsig_key((tmp_path / "phonebook.key").read_text(), "k")
    assert knot.write_all(site) == key, "an existing key is kept"


def test_a_missing_tsig_key_is_read_once_it_exists(tmp_path: Path) -> None:
    """First start: phonebookd may run before netmux@dns has made the key."""
    from netmux.phonebook.service import make_sinks

    path = tmp_path / "phonebook.key"
    cfg = parse_host(f'[phonebook]\nsinks = ["rfc2136"]\nserver = "::1"\ntsig_key = "{path}"\n')
    (sink,) = make_sinks(cfg, r.Zones.from_config(cfg))
    assert isinstance(sink, Rfc2136Sink)
    with pytest.raises(RuntimeError, match="does not exist yet"):
        sink.key  # noqa: B018
    key = TsigKey("phonebook", "hmac-sha256", os.urandom(32))
    path.write_text(render_tsig_key(key))
    assert sink.key == key


def test_knot_dir_without_knot_installed_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "netmux.toml").write_text("")
    rc = knot.main([str(tmp_path / "k"), "--user", "nosuchknot:nosuchknot",
                    "--config", str(tmp_path / "netmux.toml")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "k").exists()
    assert err.count("\n") == 1 and "apt-get install knot" in err


def test_phonebook_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"phonebook\.sinks"):
        parse_host('[phonebook]\nsinks = ["bind"]\n')
    with pytest.raises(ConfigError, match=r"phonebook\.server"):
        parse_host('[phonebook]\nserver = "dns.example"\n')
    with pytest.raises(ConfigError, match=r"phonebook\.ns_label"):
        parse_host('[phonebook]\nns_label = "a.b"\n')
    with pytest.raises(ConfigError, match=r"phonebook\.reverse"):
        parse_host('[phonebook]\nreverse = ["2001:db8::1/64"]\n')


def test_dns_recipe_files_parse() -> None:
    import tomllib

    from netmux.config import workload_from

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "dns"
    wl = workload_from("dns", tomllib.loads((recipe / "dns.toml").read_text()))
    assert wl.command[0] == "/usr/sbin/knotd" and str(wl.addresses[0]) == "fd64:cafe::d/64"
    host = parse_host((recipe / "netmux.toml.example").read_text())
    assert host.phonebook.sinks == ("rfc2136",)
    assert host.phonebook.server == str(wl.addresses[0].ip)
    dropin = (recipe / "netmux@dns.service.d" / "knot.conf").read_text()
    assert "-m netmux.phonebook.knot /var/lib/netmux/knot" in dropin
    assert "/var/lib/netmux/knot/knot.conf" in wl.command
    with pytest.raises(UsageError):
        knot.render_knot_conf(knot.KnotSite(Z, Path("/x"), ["::"], 53, user="knot; evil"))


@pytest.mark.parametrize(
    ("exc", "name", "raised"),
    [
        (errors.Denied("x"), "AccessDenied", errors.Denied),
        (errors.NameTaken("x"), "NameTaken", errors.NameTaken),
        (errors.NotFollowed("cannot follow eth0"), "NotFollowed", errors.NotFollowed),
        (errors.NotServed("x"), "NotServed", errors.NotServed),
        (errors.CallerUnknown("x"), "CallerUnknown", errors.CallerUnknown),
        (UsageError("x"), "InvalidArgument", UsageError),
        (StateError("x"), "Failed", StateError),
        (RuntimeError("bug"), "Failed", StateError),
    ],
)
def test_every_error_class_has_its_own_dbus_name_both_ways(
    exc: BaseException, name: str, raised: type[Exception]
) -> None:
    assert errors.dbus_error_name(exc) == errors.PREFIX + name
    back = errors.from_dbus_error(errors.PREFIX + name, "text")
    assert isinstance(back, raised) and str(back) == "phonebook: text"


def test_each_error_class_is_named_once() -> None:
    names = [n for _, n in errors.DBUS_ERRORS]
    assert len(set(names)) == len(names)
    assert errors.from_dbus_error("org.example.Other", "t").args == (
        "phonebook: org.example.Other: t",
    )


def test_publish_socket_options() -> None:
    """netmux's own `up`/`down` lines: leading KEY=VALUE options, then the original line."""
    po = publish_socket.parse_options
    assert po(b"httpd eth0\n") == ({}, b"httpd eth0\n")
    assert po(b"netns=httpd httpd eth0 www\n") == ({"netns": "httpd"}, b"httpd eth0 www\n")
    assert po(b"unpublish=httpd\n") == ({"unpublish": "httpd"}, b"")
    for bad in (b"color=red httpd eth0\n", b"netns=a netns=b httpd eth0\n"):
        with pytest.raises(ValueError):
            po(bad)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_fuzzed_publish_socket_options(data: bytes) -> None:
    try:
        opts, rest = publish_socket.parse_options(data)
    except ValueError:
        return
    assert set(opts) <= set(publish_socket.OPTIONS)
    assert data.endswith(rest)


def test_wait_served_returns_once_the_name_is_answered() -> None:
    """The dns recipe's ExecStartPost: NXDOMAIN until phonebookd's update lands, then data."""
    import socket
    import threading

    import dns.message
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def serve() -> None:
        for n in range(3):
            data, peer = sock.recvfrom(4096)
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            if n == 2:
                r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "AAAA",
                                                    "2001:db8::d"))  # fmt: skip
            sock.sendto(r.to_wire(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert knot.wait_served("127.0.0.1", "dns.host.example.org", 10, port=port)
    finally:
        t.join(5)
        sock.close()
    assert not knot.wait_served("127.0.0.1", "dns.host.example.org", 0.2, port=port)
