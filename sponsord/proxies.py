"""Who is the client? Believe proxy headers only from trusted proxies.

Behind Cloudflare the TCP peer is a Cloudflare edge and the visitor is in
``CF-Connecting-IP``. Anyone can send that header, so it is believed only
when the peer itself is in ``trusted_proxies``; otherwise the peer is the
client. ``X-Forwarded-For`` is read right to left, skipping trusted hops.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from importlib import resources

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def cloudflare_networks() -> list[Network]:
    """Cloudflare's ranges as shipped in ``sponsord/data/cloudflare-ips.txt``."""
    text = resources.files("sponsord").joinpath("data/cloudflare-ips.txt").read_text()
    return [
        ipaddress.ip_network(line.strip())
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def parse_networks(values: Iterable[str]) -> list[Network]:
    """CIDR strings (and the word ``cloudflare``) into networks."""
    networks: list[Network] = []
    for value in values:
        if value == "cloudflare":
            networks.extend(cloudflare_networks())
        else:
            networks.append(ipaddress.ip_network(value, strict=False))
    return networks


def ip_or_none(text: str | None) -> Address | None:
    """Parse an IP address (IPv4-mapped IPv6 unwrapped); None if it is not one."""
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def in_networks(addr: Address | None, networks: Iterable[Network]) -> bool:
    """True when ``addr`` is inside one of ``networks``."""
    return addr is not None and any(addr.version == n.version and addr in n for n in networks)


class ClientAddresses:
    """Resolves a request's client address given the trusted proxies."""

    def __init__(self, trusted: Iterable[str]) -> None:
        self.trusted = parse_networks(trusted)

    def peer(self, request: web.BaseRequest) -> Address | None:
        """The TCP peer's address (None for a Unix socket or a closed transport)."""
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, tuple | list) and peer:
            return ip_or_none(str(peer[0]))
        return None

    def __call__(self, request: web.BaseRequest) -> str:
        """The client's address as a string ("local" for a Unix-socket peer)."""
        peer = self.peer(request)
        if peer is None:
            return "local"
        if not self.trusted or not in_networks(peer, self.trusted):
            return str(peer)
        cf = ip_or_none(request.headers.get("CF-Connecting-IP"))
        if cf is not None:
            return str(cf)
        hops = [h for part in request.headers.getall("X-Forwarded-For", []) for h in part.split(",")]
        for hop in reversed(hops):
            addr = ip_or_none(hop)
            if addr is None:
                break  # a garbled hop: stop believing what lies before it
            if not in_networks(addr, self.trusted):
                return str(addr)
        return str(peer)
