"""Atomic file replacement: readers see the old file or the new one, never half of one.

Every state file, rendered configuration and metrics file netmux writes goes through
`write_atomic`. The temporary file sits next to the target (same file system, so the
rename is atomic) and is named `.NAME.XXXXXXXX.tmp`, unique per writer, so concurrent
writers never share one; a writer killed half-way leaves only such a file behind
(`scraps` finds them).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` (text is UTF-8), creating the directory if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def scraps(path: Path) -> list[Path]:
    """Temporary files `write_atomic(path, ...)` left behind when killed half-way."""
    prefix = f".{path.name}."
    try:
        return [
            p
            for p in path.parent.iterdir()
            if p.name.startswith(prefix)
            and p.name.endswith(".tmp")
            and len(p.name) == len(prefix) + 8 + 4
        ]
    except FileNotFoundError:
        return []
