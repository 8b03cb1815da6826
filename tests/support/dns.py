"""A real DNS server for tests: MX, A, AAAA, TLSA and TXT from a dict, on loopback UDP and TCP.

Built on dnslib's server, in background threads, so the resolver under test talks real
DNS (RFC 1035) to it::

    zone = {
        "example.test": {"MX": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
        "mx1.example.test": {"A": ["127.0.0.2"]},
        "_25._tcp.mx1.example.test": {"TLSA": [(3, 1, 1, bytes.fromhex("ab12..."))]},
        "_mta-sts.example.test": {"TXT": ["v=STSv1; id=20240101"]},
        "nomail.test": {"MX": [(0, ".")]},          # RFC 7505 null MX
        "broken.test": "SERVFAIL",                  # or "REFUSED", or "TIMEOUT" (no answer)
    }
    with DnsServer(zone, signed={"example.test"}) as dns:
        config_line = dns.address                   # "127.0.0.1:PORT" for dns.nameservers
        ...
        assert ("example.test", "MX") in dns.queries

A name missing from the zone is NXDOMAIN; a name present without the asked type is an
empty answer (NODATA); negative answers carry an SOA so resolvers cache them for `ttl`
(RFC 2308). Names are case-insensitive, with or without the final dot. The zone may be
changed while the server runs.

It plays a validating resolver: answers (and denials) for names at or below a `signed`
domain carry the AD bit, the others do not, and only for queries that ask for DNSSEC
with the DO bit or the AD flag (RFC 6840 5.7). With `udp_limit`, UDP answers larger than
that many bytes come back truncated (TC), so the client has to ask again over TCP.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, SOA, TLSA, TXT, A, DNSHeader, DNSRecord
from dnslib.server import DNSHandler, DNSLogger, DNSServer

from gateway.config import HostPort

Zone = Mapping[str, Mapping[str, list[Any]] | str]
TTL = 60


class _Drop(Exception):
    """Raised by the resolver so that no answer goes out: the client times out."""


class _Handler(DNSHandler):
    udp_limit = 0  # bytes; larger UDP answers go out truncated (TC)

    def handle(self) -> None:
        with contextlib.suppress(_Drop):
            super().handle()

    def get_reply(self, data: bytes) -> bytes:
        rdata = super().get_reply(data)
        if self.protocol == "udp" and self.udp_limit and len(rdata) > self.udp_limit:
            # Keep the question, as real servers do (dnslib's truncate() drops it).
            reply = DNSRecord.parse(rdata)
            short = DNSRecord(DNSHeader(id=reply.header.id, qr=1, rd=reply.header.rd, ra=1,
                                        tc=1), q=reply.q)
            rdata = short.pack()
        return rdata


def _wants_dnssec(request: DNSRecord) -> bool:
    """The AD flag, or the DO bit of the EDNS OPT record (RFC 3225)."""
    do = any(rr.rtype == QTYPE.OPT and rr.ttl & 0x8000 for rr in request.ar)
    return bool(request.header.ad) or do


class _Resolver:
    def __init__(self, owner: DnsServer) -> None:
        self.owner = owner

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        owner = self.owner
        with owner.lock:
            owner.queries.append((name, qtype))
            if handler.protocol == "tcp":
                owner.tcp_queries.append((name, qtype))
            entry = owner.zone.get(name)
            signed = any(name == d or name.endswith("." + d) for d in owner.signed)
        reply = request.reply()
        if entry == "TIMEOUT":
            raise _Drop
        if isinstance(entry, str):
            reply.header.rcode = getattr(RCODE, entry)
            return reply  # a failure is never authenticated
        answers = entry.get(qtype, []) if entry is not None else []
        for value in answers:
            reply.add_answer(RR(request.q.qname, getattr(QTYPE, qtype), ttl=owner.ttl,
                                rdata=_rdata(qtype, value)))
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
        if not answers:
            reply.add_auth(RR(".", QTYPE.SOA, ttl=owner.ttl,
                              rdata=SOA("ns.test.", "hostmaster.test.",
                                        (1, 3600, 600, 86400, owner.ttl))))
        reply.header.ad = int(signed and _wants_dnssec(request))
        return reply


def _rdata(qtype: str, value: Any) -> Any:
    if qtype == "MX":
        preference, exchange = value
        return MX(exchange if exchange.endswith(".") else exchange + ".", preference)
    if qtype == "TLSA":
        usage, selector, mtype, data = value
        return TLSA(usage, selector, mtype, data)
    if qtype == "TXT":  # one string, or a list of strings making one record
        return TXT([value] if isinstance(value, str) else value)
    return {"A": A, "AAAA": AAAA}[qtype](value)


class DnsServer:
    """Serves `zone` on 127.0.0.1, one free port for both UDP and TCP."""

    def __init__(self, zone: Zone, *, signed: Iterable[str] = (), ttl: int = TTL,
                 udp_limit: int = 0) -> None:
        self.zone: dict[str, Any] = {k.rstrip(".").lower(): v for k, v in zone.items()}
        self.signed = {d.rstrip(".").lower() for d in signed}  # may change while running
        self.ttl = ttl
        self.udp_limit = udp_limit
        self.queries: list[tuple[str, str]] = []  # (name, type) in the order asked
        self.tcp_queries: list[tuple[str, str]] = []  # those of them that came over TCP
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
        udp_handler = type("_UdpHandler", (_Handler,), {"udp_limit": self.udp_limit})
        for _ in range(20):  # the free UDP port may be taken for TCP: try another
            udp = DNSServer(resolver, "127.0.0.1", 0, logger=quiet, handler=udp_handler)
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

