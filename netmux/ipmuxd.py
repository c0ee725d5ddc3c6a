"""ipmuxd: macvlan/macvtap devices on demand for unprivileged callers (planned in issue 7)."""

from __future__ import annotations

import sys


def main() -> int:
    print("ipmuxd: not implemented yet (planned in issue 7)", file=sys.stderr)
    return 1
