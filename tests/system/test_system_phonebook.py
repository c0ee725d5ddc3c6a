"""phonebookd under a real systemd (tests/sysbox.py): Type=dbus start with the real policy,
`systemctl restart phonebookd` keeps every record (fd store), a stopped publishing unit
loses its records even when a leaked process still holds the lifeline."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests import sysbox
from tests.sysbox import SysBox

pytestmark = [
    pytest.mark.system,
    pytest.mark.requires("tinydns-data"),
]

CONFIG = """
[dns]
hostname = "box"
domain = "example.org"
[phonebook]
sinks = ["tinydns"]
"""
PY = str(sysbox.VENV_BIN / "python")
DATA = "/var/lib/netmux/tinydns/data"
# Publishes over D-Bus, then becomes `sleep` holding the lifeline (as `netmux up` does).
HOLDER = (
    "import os,sys\n"
    "from netmux.phonebook import client\n"
    "pub = client.publish(sys.argv[1], 'eth0', 'w')\n"
    "assert pub is not None\n"
    "os.set_inheritable(pub.lifeline, True)\n"
    "os.execvp('sleep', ['sleep', '600'])\n"
)


@pytest.fixture(scope="module")
def box() -> Iterator[SysBox]:
    with sysbox.boot(CONFIG) as b:
        b.install_units([sysbox.UNITS_DIR / "phonebookd.service"])
        policy = b.etc / "dbus-1" / "system.d"
        policy.mkdir(parents=True, exist_ok=True)
        src = sysbox.REPO / "dbus" / "org.netmux.Phonebook1.conf"
        (policy / src.name).write_text(src.read_text())
        b.systemctl("reload", "dbus.service")
        b.sh(
            "ip netns add w && ip -n w link set lo up && "
            "ip -n w link add eth0 type veth peer name eth1 && "
            "ip -n w link set eth1 up && ip -n w link set eth0 up && "
            "ip -n w addr add fd64:cafe::7/64 dev eth0 nodad"
        )
        b.systemctl("start", "phonebookd.service")
        yield b


def _data(box: SysBox) -> str:
    try:
        return box.path(DATA).read_text()
    except OSError:
        return ""


def _hold(box: SysBox, unit: str, name: str, *props: str) -> None:
    args = [f"--property={p}" for p in props]
    box.run("systemd-run", f"--unit={unit}", *args, f"--working-directory={sysbox.REPO}",
            PY, "-c", HOLDER, name)  # fmt: skip


def test_type_dbus_unit_owns_the_name(box: SysBox) -> None:
    show = box.show("phonebookd.service", "ActiveState", "Type", "BusName")
    assert show == {"ActiveState": "active", "Type": "dbus", "BusName": "org.netmux.Phonebook1"}
    out = box.run("busctl", "introspect", "org.netmux.Phonebook1", "/org/netmux/Phonebook1")
    assert "RecordsChanged" in out.stdout


def test_restart_keeps_every_record(box: SysBox) -> None:
    _hold(box, "holder-a", "alpha")
    _hold(box, "holder-b", "beta")
    box.wait_for(lambda: ":alpha.internal:28:" in _data(box) and ":beta.internal:" in _data(box))
    box.systemctl("restart", "phonebookd.service")
    box.wait_for(lambda: box.show("phonebookd.service", "ActiveState")["ActiveState"] == "active")
    n = box.show("phonebookd.service", "NFileDescriptorStore")
    assert int(n.get("NFileDescriptorStore", "0")) >= 6, n
    logs = [str(e.get("MESSAGE")) for e in box.journal("-u", "phonebookd.service")]
    assert any("restored 2 publication" in m for m in logs), logs[-10:]
    listed = box.run("busctl", "call", "org.netmux.Phonebook1", "/org/netmux/Phonebook1",
                     "org.netmux.Phonebook1", "List").stdout  # fmt: skip
    assert "alpha.internal." in listed and "beta.internal." in listed
    # The restored lifelines still work: stopping a holder removes its record.
    box.systemctl("stop", "holder-b.service")
    box.wait_for(lambda: ":beta.internal:" not in _data(box), timeout=5)
    assert ":alpha.internal:" in _data(box)
    box.systemctl("stop", "holder-a.service")
    box.wait_for(lambda: ":alpha.internal:" not in _data(box), timeout=5)


def test_stopped_unit_drops_records_even_if_a_process_leaks(box: SysBox) -> None:
    # KillMode=none: systemd stops the unit but leaves its process (and the lifeline) alive.
    _hold(box, "leaky", "leaky", "KillMode=none")
    box.wait_for(lambda: ":leaky.internal:" in _data(box))
    pid = box.show("leaky.service", "MainPID")["MainPID"]
    t0 = time.monotonic()
    box.systemctl("stop", "leaky.service")
    box.wait_for(lambda: ":leaky.internal:" not in _data(box), timeout=5)
    print(f"\nunit stopped -> record gone in {time.monotonic() - t0:.3f}s")
    box.run("kill", "-9", pid, check=False)


UNIT_HOLDER = (
    "import sys\n"
    "from netmux import sd\n"
    "from netmux.phonebook import client\n"
    "pub = client.publish_workload(sys.argv[1], 'eth0', [], hold='unit')\n"
    "assert pub is not None\n"
    "sd.notify(ready='1')\n"
)


def test_without_a_command_the_unit_holds_the_record(box: SysBox) -> None:
    """`netmux up NAME` without CMD: the lifeline goes to the unit's fd store and the
    record lives exactly as long as the (RemainAfterExit) unit."""
    box.sh(
        "ip netns add nocmd && ip -n nocmd link add eth0 type veth peer name eth1 && "
        "ip -n nocmd link set eth1 up && ip -n nocmd link set eth0 up && "
        "ip -n nocmd addr add fd64:cafe::8/64 dev eth0 nodad"
    )
    box.run("systemd-run", "--unit=nocmd", "--property=Type=notify",
            "--property=NotifyAccess=main", "--property=RemainAfterExit=yes",
            "--property=FileDescriptorStoreMax=4", f"--working-directory={sysbox.REPO}",
            PY, "-c", UNIT_HOLDER, "nocmd")  # fmt: skip
    box.wait_for(lambda: ":nocmd.internal:28:" in _data(box))
    show = box.show("nocmd.service", "ActiveState", "SubState", "NFileDescriptorStore")
    assert show["ActiveState"] == "active" and show["NFileDescriptorStore"] == "1", show
    # The process is gone: had that dropped the record, a later record's data has it gone.
    _hold(box, "later", "later")
    box.wait_for(lambda: ":later.internal:28:" in _data(box))
    assert ":nocmd.internal:28:" in _data(box)
    box.systemctl("stop", "later.service")
    box.systemctl("stop", "nocmd.service")
    box.wait_for(lambda: ":nocmd.internal:" not in _data(box), timeout=5)


SEED_HOLDER = (
    "import os, socket\n"
    "s = socket.socket(socket.AF_UNIX); s.connect('/run/phonebook/publish')\n"
    "s.sendall(b'seedy eth0\\n'); assert s.recv(512).startswith(b'ok ')\n"
    "os.set_inheritable(s.fileno(), True); os.execvp('sleep', ['sleep', '600'])\n"
)


def test_seed_protocol_under_systemd_and_its_unit_watched(box: SysBox) -> None:
    """The publish socket from a unit (namespace from SO_PEERCRED); the unit is watched too."""
    box.run("systemd-run", "--unit=seedy", "--property=KillMode=none",
            f"--working-directory={sysbox.REPO}", "ip", "netns", "exec", "w",
            PY, "-c", SEED_HOLDER)  # fmt: skip
    box.wait_for(lambda: ":seedy.internal:28:" in _data(box))
    pid = box.show("seedy.service", "MainPID")["MainPID"]
    box.systemctl("stop", "seedy.service")
    box.wait_for(lambda: ":seedy.internal:" not in _data(box), timeout=5)
    box.run("kill", "-9", pid, check=False)
