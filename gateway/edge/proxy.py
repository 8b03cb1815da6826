"""Who may send a PROXY protocol header, and which client address the header yields.

Behind a TCP load balancer every connection comes from the balancer, yet the client's
address must still decide relaying. HAProxy's PROXY protocol (v1 text, v2 binary; see
haproxy's doc/proxy-protocol.txt) carries it in a header before the SMTP dialogue.
aiosmtpd reads and parses the header (`proxy_protocol_timeout`); this module holds the
contract's rules around it:

- only a peer in `smtp.trusted_proxies` is asked for a header, and must send a valid one
  or its connection is closed;
- from any other peer no header is read: a PROXY line is then an unknown SMTP command and
  the peer's own address counts;
- a header naming a TCP client (TCP4/TCP6, v2 PROXY over STREAM) gives that client; one
  naming none (v2 LOCAL, v1 UNKNOWN: the balancer's own health checks) leaves the
  balancer's address, as the specification says; anything else (UDP, UNIX sockets)
  cannot name a client to relay for, and is refused like a broken header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiosmtpd.proxy_protocol import AF, PROTO, V2_CMD, ProxyData

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Peer = tuple[str, int]

# Seconds a trusted proxy has to send its header; the balancer sends it at once, so this
# only bounds a connection that hangs (aiosmtpd warns below 3).
HEADER_TIMEOUT = 10.0


class ProxyRefused(ValueError):
    """A header from a trusted proxy that names no client the gateway can use."""


def peer_ip(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a socket peer, IPv4-mapped IPv6 unwrapped; None if it has none."""
    try:
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except (ValueError, TypeError, IndexError):
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def in_networks(peer: object, networks: Sequence[Network]) -> bool:
    """True when the peer's address lies in one of the networks."""
    ip = peer_ip(peer)
    return ip is not None and any(ip in net for net in networks)


class ProxyPolicy:
    """`smtp.proxy_protocol` on: the proxies whose headers are read."""

    def __init__(self, trusted: Sequence[Network], timeout: float = HEADER_TIMEOUT) -> None:
        self.trusted = tuple(trusted)
        self.timeout = timeout

    def header_timeout(self, peer: object) -> float | None:
        """How long to wait for this peer's header; None: read no header from it."""
        return self.timeout if in_networks(peer, self.trusted) else None


def client_address(data: ProxyData, proxy: Peer) -> Peer:
    """The client a valid header names; `proxy` itself for a header that names none."""
    if not data.valid:
        raise ProxyRefused(data.error or "not a PROXY protocol header")
    if data.version == 2 and data.command == V2_CMD.LOCAL:
        return proxy
    if data.family == AF.UNSPEC and data.protocol == PROTO.UNSPEC:
        return proxy
    if data.family not in (AF.INET, AF.INET6) or data.protocol != PROTO.STREAM:
        raise ProxyRefused(f"the header names no TCP client (family {AF(data.family).name}, "
                           f"protocol {PROTO(data.protocol).name})")
    return str(data.src_addr), int(data.src_port or 0)
