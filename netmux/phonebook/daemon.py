"""phonebookd entry point (the daemon itself arrives with the phonebook issue)."""

from __future__ import annotations

import sys


def main() -> int:
    print("phonebookd: not implemented yet (planned in issue 5)", file=sys.stderr)
    return 1
