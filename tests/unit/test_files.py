"""netmux.files: the one atomic-write helper."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from netmux import files

pytestmark = pytest.mark.unit


def test_write_atomic_replaces_with_mode_and_leaves_nothing(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "state.json"
    files.write_atomic(p, "one\n")
    files.write_atomic(p, b"two\n", mode=0o600)
    assert p.read_text() == "two\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert sorted(x.name for x in p.parent.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    files.write_atomic(p, "old\n")
    with pytest.raises(TypeError):
        files.write_atomic(p, 42)  # type: ignore[arg-type]
    assert p.read_text() == "old\n"
    assert files.scraps(p) == []


def test_scraps_are_only_this_files_temporaries(tmp_path: Path) -> None:
    p = tmp_path / "web.json"
    left = tmp_path / ".web.json.abcd1234.tmp"
    for name in (left.name, ".web-1.json.abcd1234.tmp", ".web.json.x.tmp", "web.json"):
        (tmp_path / name).write_text("")
    assert files.scraps(p) == [left]
