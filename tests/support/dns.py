"""A real DNS server for tests: answers MX, A and AAAA from a dict, on loopback UDP and TCP.

Built on dnslib's server, in background threads, so the resolver under test talks real
DNS (RFC 1035) to it::

    zone = {
        "example.test": {"MX": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
        "mx1.example.test": {"A": ["127.0.0.2"]},
        "nomail.test": {"MX": [(0, ".")]},          # RFC 7505 null MX
        "broken.test": "SERVFAIL",                  # or "REFUSED", or "TIMEOUT" (no answer)
    }
    with DnsServer(zone) as dns:
        config_line = dns.address                   # "127.0.0.1:PORT" for dns.nameservers
        ...
        assert ("example.test", "MX") in dns.queries

A name missing from the zone is NXDOMAIN; a name present without the asked type is an
empty answer (NODATA). Names are case-insensitive, with or without the final dot. The
zone may be changed while the server runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer

from gateway.config import HostPort

Zone = Mapping[str, Mapping[str, list[Any]] | str]
TTL = 60


class _Drop(Exception):
    """Raised by the resolver so that no answer goes out: the client times out."""


class _Handler(DNSHandler):
    def handle(self) -> None:
        with contextlib.suppress(_Drop):
            super().handle()


class _Resolver:
    def __init__(self, owner: DnsServer) -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        with self.owner.lock:
            self.owner.queries.append((name, qtype))
            entry = self.owner.zone.get(name)
        reply = request.reply()
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif entry == "TIMEOUT":
            raise _Drop
        elif isinstance(entry, str):
            reply.header.rcode = getattr(RCODE, entry)
        else:
            for value in entry.get(qtype, []):
                reply.add_answer(RR(request.q.qname, getattr(QTYPE, qtype), ttl=TTL,
                                    rdata=_rdata(qtype, value)))
        return reply


def _rdata(qtype: str, value: Any) -> Any:
    if qtype == "MX":
        preference, exchange = value
        return MX(exchange if exchange.endswith(".") else exchange + ".", preference)
    return {"A": A, "AAAA": AAAA}[qtype](value)


class DnsServer:
    """Serves `zone` on 127.0.0.1, one free port for both UDP and TCP."""

    def __init__(self, zone: Zone) -> None:
        self.zone: dict[str, Any] = {k.rstrip(".").lower(): v for k, v in zone.items()}
        self.queries: list[tuple[str, str]] = []  # (name, type) in the order asked
        self.lock = threading.Lock()
        self.port = 0
        self._servers: list[DNSServer] = []

    @property
    def address(self) -> str:
        """"127.0.0.1:PORT", as `dns.nameservers` in the configuration takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def nameserver(self) -> HostPort:
        return HostPort("127.0.0.1", self.port)

    def start(self) -> DnsServer:
        resolver, quiet = _Resolver(self), DNSLogger("-request,-reply,-truncated,-error")
        for _ in range(20):  # the free UDP port may be taken for TCP: try another
            udp = DNSServer(resolver, "127.0.0.1", 0, logger=quiet, handler=_Handler)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(resolver, "127.0.0.1", port, tcp=True, logger=quiet,
                                handler=_Handler)
            except OSError:
                udp.server.server_close()
                continue
            self.port, self._servers = port, [udp, tcp]
            for server in self._servers:
                # A short poll interval keeps stop() quick (socketserver's default is 0.5 s).
                threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.02},
                                 daemon=True).start()
            return self
        raise OSError("no port free for both UDP and TCP")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

