"""The `netmux` command: the warm launcher's client first (netmux/launch.py), the whole CLI
(netmux/cli.py) when there is no launcher to ask or the command is not one it serves."""

from __future__ import annotations

import sys


def main() -> int:
    from .launch import remote

    rc = remote(sys.argv[1:])
    if rc is not None:
        return rc
    if "site" not in sys.modules:  # started with -S (debian/netmux.command): the CLI needs it
        import site

        site.main()
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
