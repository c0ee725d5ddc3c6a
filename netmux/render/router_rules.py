"""Rules for the upstream router: let the internet reach the service network. Pure.

The original design's trick: the prefix delegated to the server can change, but the bits
between the ISP's /56 and the /64 (the subnet ID the router's PD pool hands out) do not.
`ip6 daddr & e000:0:0:ff:: == 2000:0:0:1::` matches "global unicast (2000::/3) with subnet
ID 1" whatever the ISP's part is. nftables and ip6tables (non-contiguous masks) express it;
RouterOS cannot ("is not a valid dns name"), so for RouterOS the rules are an address list
of the statically bound prefixes (DHCPv6-PD static bindings per server IAID).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from ipaddress import IPv6Address, IPv6Network
from typing import Literal

from ..config import HostConfig
from ..errors import UsageError

Style = Literal["nft", "ip6tables", "routeros"]
STYLES: tuple[Style, ...] = ("nft", "ip6tables", "routeros")

SEED_VALUE = IPv6Address("2000:0:0:1::")
SEED_MASK = IPv6Address("e000:0:0:ff::")


def parse_match(text: str) -> tuple[IPv6Address, IPv6Address]:
    """'2000:0:0:1::/e000:0:0:ff::' -> (value, mask); UsageError otherwise."""
    allowed = "VALUE/MASK with two IPv6 addresses, such as 2000:0:0:1::/e000:0:0:ff::"
    value, sep, mask = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return IPv6Address(value), IPv6Address(mask)
    except ValueError:
        raise UsageError(
            f"render router-rules: --match {text!r} is not allowed: {allowed}"
        ) from None


def check_match(value: IPv6Address, mask: IPv6Address) -> None:
    if int(value) & ~int(mask) & ((1 << 128) - 1):
        raise UsageError(
            f"render router-rules: {value} has bits outside the mask {mask}; "
            "the match could never be true"
        )
    if not int(mask):
        raise UsageError("render router-rules: an all-zero mask matches everything")


def render(
    style: Style,
    value: IPv6Address = SEED_VALUE,
    mask: IPv6Address = SEED_MASK,
    static_prefixes: Sequence[IPv6Network] = (),
    list_name: str = "svc_net1",
    chain: str = "forward",
) -> str:
    """The router's accept rules for the service network, in the given style."""
    check_match(value, mask)
    if style == "nft":
        # A table/chain block without a hook merges into an existing `inet filter` table
        # when loaded with `nft -f`; the rule accepts before the router's drop policy.
        return (
            "# netmux: accept inbound traffic to the service network (any ISP prefix).\n"
            "table inet filter {\n"
            f"\tchain {chain} {{\n"
            f"\t\tip6 daddr & {mask} == {value} counter accept "
            'comment "netmux service network"\n'
            "\t}\n"
            "}\n"
        )
    if style == "ip6tables":
        return (
            "# netmux: accept inbound traffic to the service network (any ISP prefix).\n"
            f"ip6tables -A {chain.upper()} -d {value}/{mask} -j ACCEPT\n"
        )
    if style == "routeros":
        if not static_prefixes:
            raise UsageError(
                "render router-rules --routeros: RouterOS cannot match an address mask; "
                "give the statically bound prefixes (--prefix 2001:db8:0:1::/64 ...)"
            )
        lines = [
            "# netmux: RouterOS cannot match an address mask; these are the prefixes",
            "# statically bound (DHCPv6-PD, per server IAID) to netmux hosts.",
            "/ipv6 firewall address-list",
        ]
        lines += [
            f'add address={p} list={list_name} comment="netmux static binding"'
            for p in static_prefixes
        ]
        lines += [
            "/ipv6 firewall filter",
            f"add chain={chain} action=accept dst-address-list={list_name} "
            'comment="netmux service network"',
        ]
        return "\n".join(lines) + "\n"
    raise UsageError(f"render router-rules: style {style!r} is not one of {', '.join(STYLES)}")


def text_from_args(args: argparse.Namespace, cfg: HostConfig) -> str:
    """`netmux render router-rules [--nft|--ip6tables|--routeros] [--prefix P] [--match V/M]`.

    RouterOS prefixes default to the networks of mux.static_addresses.
    """
    style: Style = getattr(args, "router_style", None) or "nft"
    value, mask = (
        parse_match(args.match) if getattr(args, "match", None) else (SEED_VALUE, SEED_MASK)
    )
    prefixes: list[IPv6Network] = []
    for p in getattr(args, "prefix", None) or []:
        try:
            prefixes.append(IPv6Network(p, strict=True))
        except ValueError:
            raise UsageError(
                f"render router-rules: --prefix {p!r} is not allowed: an IPv6 prefix with "
                "host bits clear, such as 2001:db8:0:1::/64"
            ) from None
    if not prefixes:
        prefixes = [a.network for a in cfg.mux.static_addresses]
    return render(style, value, mask, prefixes)
