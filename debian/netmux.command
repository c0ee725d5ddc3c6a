#!/usr/bin/python3 -S
# The `netmux` command, installed over the generated console script (debian/rules).
# Without site, ~4 ms of every start: the warm launcher's client (netmux/launch.py) needs
# only the package itself, and netmux/__main__.py runs site before the whole CLI.
import sys

sys.path.append("/usr/lib/python3/dist-packages")
from netmux.__main__ import main  # noqa: E402

sys.exit(main())
