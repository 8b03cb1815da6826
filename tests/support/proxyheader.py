"""PROXY protocol headers written by hand, for the cases a real HAProxy never sends.

Laid out by haproxy's doc/proxy-protocol.txt: v1 is one text line, v2 a 12-byte
signature, version/command, family/protocol, a length and the addresses. The tests that
matter most run HAProxy itself (`tests/support/haproxy.py`); these cover broken, LOCAL,
UNIX and UDP headers.
"""

from __future__ import annotations

import ipaddress
import smtplib
import socket
import struct
from typing import Any

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
LOCAL, PROXY = 0x0, 0x1
UNSPEC, INET, INET6, UNIX = 0x0, 0x1, 0x2, 0x3
STREAM, DGRAM = 0x1, 0x2


def v1(source: str, port: int = 40000, dest: str = "127.0.0.1", dest_port: int = 25) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {dest} {port} {dest_port}\r\n".encode()


def v2(source: str = "", port: int = 40000, dest: str = "127.0.0.1", dest_port: int = 25, *,
       command: int = PROXY, family: int | None = None, protocol: int = STREAM,
       addresses: bytes | None = None) -> bytes:
    """A v2 header; `family` and `addresses` override what `source` would give."""
    if addresses is None:
        src, dst = ipaddress.ip_address(source), ipaddress.ip_address(dest)
        addresses = src.packed + dst.packed + struct.pack("!HH", port, dest_port)
        if family is None:
            family = INET if src.version == 4 else INET6
    return (V2_SIGNATURE + bytes([0x20 | command, (family or UNSPEC) << 4 | protocol])
            + struct.pack("!H", len(addresses)) + addresses)


class ProxiedSMTP(smtplib.SMTP):
    """smtplib's client that opens the connection with `header`, as a balancer would."""

    def __init__(self, header: bytes, *args: Any, **kwargs: Any) -> None:
        self.header = header
        super().__init__(*args, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.header)
        return sock
