"""Config validation: good, missing, wrong type, unknown key, bad name, bad prefix."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path

import pytest

from netmux import config
from netmux.config import ConfigError, Port, parse_host, workload_from

pytestmark = pytest.mark.unit


def test_defaults_reproduce_the_original_design() -> None:
    c = parse_host("")
    assert c.mux.netns == "mux" and c.mux.parent == "host0" and c.mux.gateway == "gw0"
    assert c.mux.parent_kind == "auto"
    assert c.mux.ula == IPv6Interface("fd64:cafe::1/64")
    assert c.mux.uplinks == ("enp*", "eth*")
    assert c.nat64.prefix == IPv6Network("64:ff9b::/96")
    assert c.resolver.address == IPv6Address("fd64:cafe::53")


def test_good_file(tmp_path: Path) -> None:
    p = tmp_path / "netmux.toml"
    p.write_text(
        '[mux]\nnetns = "mux2"\nparent_kind = "veth"\nuplinks = ["enp3s0"]\n'
        '[dns]\nhostname = "mini"\ndomain = "example.net"\n'
        '[nat64]\nprefix = "2001:db8:64::/96"\n'
    )
    c = config.load_host(p)
    assert c.mux.netns == "mux2" and c.mux.parent_kind == "veth"
    assert c.public_zone == "mini.example.net"
    assert c.source == str(p)
    assert config.uplink_matches(c.mux, "enp3s0") and not config.uplink_matches(c.mux, "eth0")


def test_missing_default_file_means_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETMUX_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_CONFIG", Path("/nonexistent/netmux.toml"))
    assert config.load_host().mux == config.MuxConfig()


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected an existing file"):
        config.load_host(tmp_path / "nope.toml")


def test_env_names_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.toml"
    p.write_text('[mux]\nnetns = "fromenv"\n')
    monkeypatch.setenv("NETMUX_CONFIG", str(p))
    assert config.load_host().mux.netns == "fromenv"


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ('[mux]\nnetns = 5\n', "mux.netns", "a string"),
        ('[mux]\ngateway = "a very long interface"\n', "mux.gateway", "interface name"),
        ('[mux]\nparent_kind = "ipvlan"\n', "mux.parent_kind", "'auto', 'dummy'"),
        ('[mux]\nula = "2001:db8::1/64"\n', "mux.ula", "ULA"),
        ('[mux]\nula = "fd64:cafe::1/48"\n', "mux.ula", "ULA /64"),
        ('[mux]\nula = "fd64:zz::1/64"\n', "mux.ula", "IPv6 address with prefix"),
        ('[mux]\nuplinks = "eth*"\n', "mux.uplinks", "a list"),
        ('[mux]\nuplinks = ["e th"]\n', "mux.uplinks", "pattern"),
        ('[mux]\nbogus = 1\n', "mux.bogus", "known keys: netns"),
        ('bogus = 1\n', "bogus", "known keys: mux"),
        ('mux = 1\n', "mux", "a table"),
        ('[nat64]\nprefix = "64:ff9b::/95"\n', "nat64.prefix", "RFC 6052"),
        ('[nat64]\nprefix = "64:ff9b::1/96"\n', "nat64.prefix", "host bits clear"),
        ('[workload]\ntimeout = -1\n', "workload.timeout", "greater than 0"),
        ('[workload]\ntimeout = true\n', "workload.timeout", "a number"),
        ('[workload]\nlink = "veth"\n', "workload.link", "'macvlan', 'routed'"),
        ('[dns]\ndomain = "bad_domain"\n', "dns.domain", "DNS name"),
        ('[paths]\nrun_dir = "relative"\n', "paths.run_dir", "absolute"),
    ],
)  # fmt: skip
def test_errors_name_file_key_value_and_what_is_allowed(text: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_host(text, source="/etc/netmux/netmux.toml")
    msg = str(e.value)
    assert msg.startswith(f"/etc/netmux/netmux.toml: {key}: "), msg
    assert allowed in msg, msg
    assert "\n" not in msg


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "netmux.toml"
    p.write_text("[mux\n")
    with pytest.raises(ConfigError, match=f"{p}: .*valid TOML"):
        config.load_host(p)


def test_workload_file_env_and_cli_merge_in_order() -> None:
    wl = workload_from(
        "httpd",
        {"command": "/usr/sbin/httpd -f", "ports": ["tcp/80"], "user": "www-data"},
        "/etc/netmux/workloads/httpd.toml",
        env={"NETMUX_PORTS": "tcp/80 tcp/443", "NETMUX_PUBLISH": "no"},
        overrides={"user": "nobody", "ports": None},
    )
    assert wl.command == ("/usr/sbin/httpd", "-f")
    assert wl.ports == (Port("tcp", 80, 80), Port("tcp", 443, 443))
    assert wl.user == "nobody" and wl.publish is False


def test_workload_static_address_and_names() -> None:
    wl = workload_from("resolver", {"addresses": ["fd64:cafe::53/64"], "dns_names": ["ns"]})
    assert wl.addresses == (IPv6Interface("fd64:cafe::53/64"),)
    assert wl.dns_names == ("ns",)


@pytest.mark.parametrize(
    ("table", "env", "key", "allowed"),
    [
        ({"ports": ["tcp/0"]}, {}, "ports", "PROTO/PORT"),
        ({"ports": ["icmp/1"]}, {}, "ports", "tcp, udp or sctp"),
        ({"ports": ["tcp/90-80"]}, {}, "ports", "FIRST-LAST"),
        ({"kind": "container"}, {}, "kind", "'process' or 'vm'"),
        ({"addresses": ["fd64::zz/64"]}, {}, "addresses", "IPv6 addresses"),
        ({"user": "bad user"}, {}, "user", "user or group name"),
        ({"command": 5}, {}, "command", "list of strings"),
        ({"dns_names": ["Bad_Name"]}, {}, "dns_names", "DNS labels"),
        ({"colour": "red"}, {}, "colour", "known keys"),
        ({}, {"NETMUX_PORTS": "tcp/http"}, "NETMUX_PORTS", "PROTO/PORT"),
        ({}, {"NETMUX_TIMEOUT": "soon"}, "NETMUX_TIMEOUT", "seconds"),
        ({"link": "veth"}, {}, "link", "'macvlan' or 'routed'"),
        ({}, {"NETMUX_LINK": "bridge"}, "NETMUX_LINK", "'macvlan' or 'routed'"),
    ],
)  # fmt: skip
def test_workload_errors(table: dict, env: dict, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as e:
        workload_from("w", table, "/etc/netmux/workloads/w.toml", env=env)
    msg = str(e.value)
    assert key in msg and allowed in msg, msg


def test_link_file_env_cli_and_host_default() -> None:
    host = parse_host('[workload]\nlink = "routed"\n', source="netmux.toml")
    assert config.effective_link(host, workload_from("w")) == "routed"
    assert config.effective_link(config.HostConfig(), workload_from("w")) == "macvlan"
    wl = workload_from("w", {"link": "routed"}, env={"NETMUX_LINK": "macvlan"})
    assert wl.link == "macvlan"
    wl = workload_from("w", {"link": "macvlan"}, overrides={"link": "routed"})
    assert config.effective_link(config.HostConfig(), wl) == "routed"
    vm = workload_from("w", {"kind": "vm"})
    assert config.effective_link(host, vm) == "macvlan"  # a VM's macvtap is on the segment


def test_bad_workload_name_is_rejected() -> None:
    with pytest.raises(Exception, match="not allowed"):
        workload_from("Bad_Name")


def test_port_str_roundtrip() -> None:
    for spec in ("tcp/80", "udp/6000-6010", "sctp/9"):
        assert str(config.parse_port(spec)) == spec


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("[workload]\ntimeout = nan\n", "workload.timeout", "finite"),
        ("[workload]\ntimeout = inf\n", "workload.timeout", "finite"),
        ("[deny]\ntimeout = -inf\n", "deny.timeout", "finite"),
        ('[mux]\nroot_link = "../../x y"\n', "mux.root_link", "interface name"),
        ("[uplink]\npd_sla_id = -5\n", "uplink.pd_sla_id", "0-65535"),
        ("[uplink]\npd_sla_id = 65536\n", "uplink.pd_sla_id", "0-65535"),
        ('[workload]\nifname = "lo"\n', "workload.ifname", "other than lo"),
    ],
)  # fmt: skip
def test_numbers_names_and_ranges_are_checked(text: str, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_host(text, source="/etc/netmux/netmux.toml")
    assert str(e.value).startswith(f"/etc/netmux/netmux.toml: {key}: ")
    assert allowed in str(e.value), str(e.value)


@pytest.mark.parametrize(
    ("table", "env", "overrides"),
    [
        ({"timeout": float("nan")}, {}, {}),
        ({}, {"NETMUX_TIMEOUT": "nan"}, {}),
        ({}, {"NETMUX_TIMEOUT": "inf"}, {}),
        ({}, {}, {"timeout": float("nan")}),
        ({}, {}, {"timeout": float("inf")}),
    ],
)
def test_workload_timeout_must_be_finite(table: dict, env: dict, overrides: dict) -> None:
    with pytest.raises(ConfigError, match="finite number of seconds"):
        workload_from("w", table, "w.toml", env, overrides)


def test_non_utf8_files_are_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "netmux.toml"
    p.write_bytes(b'[dns]\nhostname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="expected UTF-8 text"):
        config.load_host(p)
    wdir = tmp_path / "workloads"
    wdir.mkdir()
    (wdir / "w.toml").write_bytes(b'user = "\xff"\n')
    host = parse_host(f'[paths]\nworkloads_dir = "{wdir}"\n')
    with pytest.raises(ConfigError, match=f"{wdir}/w.toml: .*UTF-8"):
        config.load_workload(host, "w")


def test_empty_or_missing_host_file_is_noted(tmp_path: Path) -> None:
    p = tmp_path / "netmux.toml"
    p.write_text("")
    note = config.defaults_note(config.load_host(p))
    assert note is not None and "empty" in note
    p.write_text('[dns]\nhostname = "box"\n')
    assert config.defaults_note(config.load_host(p)) is None
    assert "missing" in (
        config.defaults_note(config.HostConfig(source="x (missing: defaults)")) or ""
    )


def test_seconds_arg_refuses_nan_inf_and_zero() -> None:
    import argparse

    assert config.seconds_arg("2.5") == 2.5
    for bad in ("nan", "inf", "-1", "0", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            config.seconds_arg(bad)
    assert config.seconds_or_zero_arg("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError):
        config.seconds_or_zero_arg("nan")


def test_one_table_defines_every_workload_key() -> None:
    """config.WORKLOAD_SETTINGS drives the file, the environment, the options of up and
    run, and docs/configuration.md: every field of WorkloadConfig is in it, once."""
    import dataclasses

    from netmux import cli

    fields = [f.name for f in dataclasses.fields(config.WorkloadConfig) if f.name != "name"]
    assert list(config.WORKLOAD_KEYS) == fields
    assert set(config.ENV_KEYS.values()) == set(fields)
    parser = cli.build_parser()
    for command in ("up", "run"):
        args = parser.parse_args([command, "web"])
        assert {s.key for s in config.WORKLOAD_FLAGS} <= set(vars(args))
    args = parser.parse_args(["up", "web", "--vm", "--port", "tcp/80", "--wait", "ula"])
    assert (args.kind, args.ports, args.wait) == ("vm", ["tcp/80"], "ula")
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for s in config.WORKLOAD_SETTINGS:
        assert f"| `{s.key}` | `NETMUX_{s.key.upper()}` |" in doc


def test_each_workload_key_from_the_environment_and_the_command_line() -> None:
    env = {"NETMUX_PUBLISH": "no", "NETMUX_TIMEOUT": "2.5", "NETMUX_PORTS": "tcp/80 udp/53",
           "NETMUX_WAIT": "ula", "NETMUX_KIND": "vm", "NETMUX_DNS_NAMES": "www api"}  # fmt: skip
    wl = config.workload_from("web", {"wait": "none"}, env=env, overrides={"wait": "global"})
    assert (wl.publish, wl.timeout, wl.kind, wl.dns_names, wl.wait) == (
        False, 2.5, "vm", ("www", "api"), "global"
    )  # fmt: skip
    assert [str(p) for p in wl.ports] == ["tcp/80", "udp/53"]
    with pytest.raises(ConfigError, match="environment NETMUX_TIMEOUT: timeout: 'x'"):
        config.workload_from("web", env={"NETMUX_TIMEOUT": "x"})


def test_resolved_hints_leave_no_type_resolution_to_a_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm launcher resolves every config class's field types once (resolve_hints):
    a request's config load, whichever tables it has, then resolves none (~2 ms each)."""
    config.resolve_hints()

    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError(f"get_type_hints{args} at load time")

    tables = [k for k, tp in config._hints(config.HostConfig).items()
              if config.dataclasses.is_dataclass(tp)]  # fmt: skip
    assert "mux" in tables and "phonebook" in tables
    monkeypatch.setattr(config.typing, "get_type_hints", refuse)
    parse_host("".join(f"[{t}]\n" for t in tables))
    workload_from("web", {"ports": ["tcp/80"]})
