"""netmux: a network namespace and a real, routable IPv6 address for every workload."""

__version__ = "0.1.0"
