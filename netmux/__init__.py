"""netmux: a network namespace and a real, routable IPv6 address for every workload."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# The Debian package carries pyroute2 0.9.7 privately here (Debian 12 has 0.7.2, too old):
# put it first for netmux alone. Absent in a venv or a source checkout. See debian/README.source.
VENDOR_DIR = "/usr/lib/netmux/vendor"
if _os.path.isdir(VENDOR_DIR) and VENDOR_DIR not in _sys.path:
    _sys.path.insert(0, VENDOR_DIR)
