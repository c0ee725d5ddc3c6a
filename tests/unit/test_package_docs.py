"""The documentation stays true: every config key documented, every doctor check explained,
man pages well-formed and covering every subcommand, links pointing at real files."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from netmux import cli, config, doctor
from netmux.doctor import Facts, LinkFact
from tests.conftest import require

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def configdoc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("configdoc", DOCS / "configdoc.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_config_key_is_documented() -> None:
    missing = configdoc().undocumented()
    assert not missing, (
        f"config keys without a description: {missing} — add a comment above the field in "
        "netmux/config.py (or an entry in DESCRIPTIONS in docs/configdoc.py)"
    )


def test_configuration_reference_and_example_are_current() -> None:
    cd = configdoc()
    current = (DOCS / "configuration.md").read_text()
    assert cd.rendered_md(current) == current, (
        "docs/configuration.md is out of date: run .venv/bin/python docs/configdoc.py --write"
    )
    assert (DOCS / "examples" / "netmux.toml").read_text() == cd.example_toml(), (
        "docs/examples/netmux.toml is out of date: run .venv/bin/python docs/configdoc.py --write"
    )


def test_example_config_parses_to_the_defaults() -> None:
    text = (DOCS / "examples" / "netmux.toml").read_text()
    assert config.parse_host(text, "example") == config.HostConfig()
    uncommented = re.sub(r"^#(?=[a-z\[])", "", text, flags=re.M)  # every key set to its default
    assert config.parse_host(uncommented, "example") == config.HostConfig()


def test_every_doctor_check_is_explained() -> None:
    host = config.parse_host("", "(t)")
    samples = [
        Facts(root=False),
        Facts(kinds={k: False for k in doctor.KINDS}, mux_exists=True, dig=False),
        Facts(
            kinds={k: True for k in doctor.KINDS},
            mux_exists=True,
            parent=LinkFact("veth", True),
            gateway=LinkFact("macvlan", True),
            dns={"internal": "SERVFAIL"},
        ),
        Facts(kinds={}),
    ]
    ids = set()
    for f in samples:
        for c in doctor.evaluate(f, host):
            ids.add(re.sub(r"^dns\..*", "dns.ZONE", c.id))
    text = (DOCS / "troubleshooting.md").read_text()
    unexplained = sorted(i for i in ids if f"| `{i}` |" not in text)
    assert not unexplained, f"docs/troubleshooting.md has no row for: {unexplained}"


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sorted(sub.choices)  # type: ignore[arg-type]


def test_man_page_covers_every_subcommand() -> None:
    text = (DOCS / "man" / "netmux.8").read_text()
    missing = [c for c in _subcommands() if not re.search(rf"^\.BI? \"?{c}\b", text, re.M)]
    assert not missing, f"docs/man/netmux.8 does not describe: {missing}"


def test_man_pages_are_well_formed_and_packaged() -> None:
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (DOCS / "man").glob("*.[1-8]"))
    listed = (ROOT / "debian" / "netmux.manpages").read_text().split()
    assert sorted(listed) == pages
    require("groff")
    for page in pages:
        r = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", str(ROOT / page)],
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0 and not r.stderr, f"{page}: {r.stderr}"


def test_console_scripts_have_man_pages() -> None:
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for script in scripts:
        assert (DOCS / "man" / f"{script}.8").exists(), f"no man page for {script}"


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_relative_links_resolve() -> None:
    for md in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target, _ in LINK.findall(md.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            assert (md.parent / target).exists(), f"{md.relative_to(ROOT)}: broken link {target}"


def test_configdoc_script_runs() -> None:
    r = subprocess.run([sys.executable, str(DOCS / "configdoc.py")], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
