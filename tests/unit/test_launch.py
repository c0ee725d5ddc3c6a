"""The launcher's pure parts: which commands the client hands over, the Exec that crosses
the socket, and the unit names phonebookd accepts from root (unit=)."""

from __future__ import annotations

import pytest

from netmux import become, launch
from netmux.errors import UsageError
from netmux.phonebook.checks import check_unit_name

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["up", "web"], "up"),
        (["--config", "/x.toml", "-q", "down", "a", "b"], "down"),
        (["--config=/x.toml", "--debug", "status"], "status"),
        (["--quiet", "ls", "--json"], "ls"),
        (["run", "x", "--", "up"], "run"),
        (["--config"], None),
        ([], None),
    ],
)
def test_command_of_skips_the_global_options(argv: list[str], command: str | None) -> None:
    assert launch.command_of(argv) == command


def test_only_the_served_commands_are_handed_over() -> None:
    assert {"up", "down", "ls", "status"} == launch.COMMANDS
    assert launch.remote(["run", "x", "--", "true"]) is None  # never asked: own process


def test_an_exec_survives_the_wire() -> None:
    ex = become.Exec(name="vm1", argv=("qemu", "-netdev", "tap,fd=7"), env={"A": "1"},
                     user="nobody", gid=65534, pass_fds=(7, 9))  # fmt: skip
    import marshal

    back = become.Exec.from_json(marshal.loads(marshal.dumps(ex.as_json())))
    assert back == ex and back.pass_fds == (7, 9) and back.netns and back.path is None
    hold = become.hold("web")
    assert hold.argv == ("netmux-hold-web", "infinity") and not hold.netns and hold.path
    assert hold.drop_caps == (become.CAP_SYS_ADMIN,)
    capped = become.Exec(name="web", argv=("true",), drop_caps=(21,))
    assert become.Exec.from_json(marshal.loads(marshal.dumps(capped.as_json()))) == capped
    assert become.Exec.from_json(capped.as_json()).drop_caps == (21,)


@pytest.mark.parametrize("name", ["netmux@web.service", "a.service", "x@a\\x2db.service"])
def test_unit_names_root_may_give(name: str) -> None:
    assert check_unit_name(name) == name


@pytest.mark.parametrize("name", ["web", ".service", "a b.service", "x/../y.service", "a.socket"])
def test_unit_names_refused(name: str) -> None:
    with pytest.raises(UsageError, match=r"NAME\.service"):
        check_unit_name(name)


def test_the_mount_at_root_is_told_by_its_id() -> None:
    """A unit's own mount namespace copies every mount under a new ID (measured under
    systemd 252: "/" is 150 in PID 1's mountinfo, 570 in a PrivateMounts= unit's)."""
    from netmux import nsutil

    init = ["108 1 0:39 / /x rw - tmpfs t rw", "150 108 0:40 / / rw shared:2 - tmpfs t rw"]
    unit = ["570 514 0:40 / / rw shared:137 master:2 - tmpfs t rw"]
    assert nsutil.root_mount_id(init) == "150" and nsutil.root_mount_id(unit) == "570"
    assert nsutil.root_mount_id(["30 27 0:5 / /dev rw - devtmpfs udev rw"]) is None
