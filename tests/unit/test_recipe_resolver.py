"""The netmux@resolver recipe (recipes/resolver): its files parse, fit together and with
the dns recipe, the config its drop-in renders passes unbound-checkconf, and the unit with
the drop-in passes `systemd-analyze verify`. Nothing is started (no root needed)."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from netmux import config, daemons
from netmux.render import unbound
from tests import sysbox

pytestmark = pytest.mark.unit

RECIPE = sysbox.REPO / "recipes" / "resolver"
DROPIN = RECIPE / "netmux@resolver.service.d" / "unbound.conf"


def recipe_host() -> config.HostConfig:
    return config.parse_host((RECIPE / "netmux.toml.example").read_text(), "netmux.toml.example")


def test_workload_file_and_config_agree() -> None:
    wl = config.workload_from("resolver", tomllib.loads((RECIPE / "resolver.toml").read_text()))
    host = recipe_host()
    assert [str(a) for a in wl.addresses] == [f"{host.resolver.address}/64"]
    assert {str(p) for p in wl.ports} == {"udp/53", "tcp/53"}
    assert wl.wait == "ula" and not wl.publish
    conf = wl.command[wl.command.index("-c") + 1]
    assert f"--output {conf}" in DROPIN.read_text()
    # The host's zones are stub zones to the dns recipe's Knot by default.
    dns = tomllib.loads((sysbox.REPO / "recipes" / "dns" / "dns.toml").read_text())
    knot = dns["addresses"][0].split("/")[0]
    stubs = unbound.stubs(host)
    assert stubs and all(s.addrs == (knot,) for s in stubs)
    assert "internal." in {s.zone for s in stubs}


@pytest.mark.requires("unbound-checkconf")
def test_rendered_config_passes_unbound_checkconf(tmp_path: Path) -> None:
    host = recipe_host()
    conf = tmp_path / "unbound.conf"
    conf.write_text(unbound.render(host, daemons.unbound(), tmp_path))
    r = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
    text = conf.read_text()
    assert f"dns64-prefix: {host.nat64.prefix}" in text and "fd64:cafe::d" in text


@pytest.mark.requires("systemd-analyze")
def test_dropin_verifies_with_the_template(tmp_path: Path) -> None:
    for unit in sysbox.unit_files():  # netmux@ needs netmux-mux etc.
        (tmp_path / unit.name).write_text(sysbox.substitute(unit.read_text(), sysbox.VENV_BIN))
    d = tmp_path / "netmux@resolver.service.d"
    d.mkdir()
    (d / DROPIN.name).write_text(sysbox.substitute(DROPIN.read_text(), sysbox.VENV_BIN))
    man = tmp_path / "man" / "man8"
    man.mkdir(parents=True)
    for page in (sysbox.REPO / "docs" / "man").glob("*.8"):
        (man / page.name).symlink_to(page)
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:", MANPATH=f"{tmp_path / 'man'}:")
    r = subprocess.run(
        ["systemd-analyze", "verify", "netmux@resolver.service"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr + r.stdout
