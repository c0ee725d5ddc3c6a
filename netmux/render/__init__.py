"""Daemon configurations rendered from netmux.toml: one pure module per daemon (radvd,
dhcpcd, tayga, jool, unbound, nat, router_rules), each a function of the host config and the
features the installed daemon has (netmux.daemons probes them). `netmux render WHAT`, the
edge that probes and writes, is render/command.py. This package imports nothing, so any
module may use a renderer without a cycle."""
