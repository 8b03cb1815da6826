"""DANE for SMTP: an MX host's TLSA records, which of them count, and whether a chain matches.

RFC 7672 (SMTP with DANE), RFC 6698 and RFC 7671 (TLSA and its operational rules), RFC
7218 (the acronyms in logs). For SMTP only DANE-TA(2) and DANE-EE(3) are usable (RFC 7672
3.1.3: PKIX-TA(0) and PKIX-EE(1) are not), with selectors Cert(0) and SPKI(1) and
matching types Full(0), SHA2-256(1) and SHA2-512(2). DANE-EE(3) matches the server's own
certificate or key and ignores its names and dates (RFC 7672 3.1.1). DANE-TA(2) matches
a CA certificate the server sends in its chain; the server certificate must then chain
to it and name the MX host (RFC 7672 3.1.2, 3.2.2), checked with cryptography's X.509
verifier. Where both digests are published for one usage and selector, only the
strongest counts (RFC 7671 9, digest algorithm agility). The records of a host are at
`_<port>._tcp.<host>` (RFC 6698 3), looked up through the gateway's resolver; only a
DNSSEC-secure answer counts (RFC 7672 2.2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.delivery.resolver import DnsResolver

DANE_TA, DANE_EE = 2, 3
_USAGES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}
_DIGESTS = {1: hashlib.sha256, 2: hashlib.sha512}
_DIGEST_SIZES = {1: 32, 2: 64}
_STRENGTH = {0: 0, 1: 1, 2: 2}  # Full(0) is no digest: agility does not drop it


@dataclass(frozen=True)
class Tlsa:
    """One TLSA record: certificate usage, selector, matching type and association data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def from_rdata(cls, rdata: Any) -> Tlsa:
        """From a dnspython TLSA rdata."""
        return cls(rdata.usage, rdata.selector, rdata.mtype, bytes(rdata.cert))

    @property
    def usable(self) -> bool:
        """Whether RFC 7672 lets an SMTP client authenticate a server with it."""
        size = _DIGEST_SIZES.get(self.mtype)
        return (self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1)
                and self.mtype in (0, 1, 2) and (size is None or len(self.data) == size))

    def matches(self, cert: x509.Certificate) -> bool:
        """Whether this record's association data is this certificate's (or its key's)."""
        if self.selector == 0:
            content = cert.public_bytes(serialization.Encoding.DER)
        else:
            content = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = _DIGESTS.get(self.mtype)
        return (digest(content).digest() if digest else content) == self.data

    def __str__(self) -> str:
        data = self.data.hex()
        if len(data) > 64:
            data = data[:32] + "..."
        usage = _USAGES.get(self.usage, "usage")
        return f"{usage} {self.usage} {self.selector} {self.mtype} {data}"


def usable(records: Iterable[Tlsa]) -> tuple[Tlsa, ...]:
    """The records an SMTP client uses: usable ones, weaker digests dropped (RFC 7671 9)."""
    found = [r for r in records if r.usable]
    strongest: dict[tuple[int, int], int] = {}
    for r in found:
        key = (r.usage, r.selector)
        strongest[key] = max(strongest.get(key, 0), _STRENGTH[r.mtype])
    return tuple(r for r in found
                 if r.mtype == 0 or _STRENGTH[r.mtype] == strongest[(r.usage, r.selector)])


@dataclass(frozen=True)
class HostTlsa:
    """What DNS says of one MX host's TLSA records."""

    host: str
    name: str  # _<port>._tcp.<host>
    secure: bool
    records: tuple[Tlsa, ...]

    @property
    def usable(self) -> tuple[Tlsa, ...]:
        """The records that authenticate the host: none unless the answer is secure."""
        return usable(self.records) if self.secure else ()

    def describe(self) -> str:
        """Why the host is, or is not, a DANE host, in a few words."""
        if not self.records:
            return f"{self.name} has no TLSA records"
        if not self.secure:
            return f"the TLSA records of {self.host} are not DNSSEC-signed"
        if not self.usable:
            return (f"{self.host} has no TLSA record usable for SMTP (DANE-TA or DANE-EE): "
                    + ", ".join(str(r) for r in self.records))
        return f"{self.host} has DNSSEC-signed TLSA records: " + ", ".join(
            str(r) for r in self.usable)


async def lookup_tlsa(resolver: DnsResolver, host: str, port: int) -> HostTlsa:
    """The TLSA RRset of `host` for SMTP on `port`; DnsFailure when DNS could not say."""
    name = f"_{port}._tcp.{host.rstrip('.')}"
    answer = await resolver.lookup(name, "TLSA")
    return HostTlsa(host, name, answer.secure, tuple(Tlsa.from_rdata(r) for r in answer.records))


@dataclass(frozen=True)
class Match:
    """Which record matched which certificate of the server's chain (0 is the server's)."""

    record: Tlsa
    depth: int
    subject: str

    def __str__(self) -> str:
        what = "the server certificate" if self.depth == 0 else f"the CA at depth {self.depth}"
        return f"TLSA {self.record} matched {what} ({self.subject})"


class Mismatch(Exception):
    """No usable TLSA record matches the chain; the text says why, record by record."""


def verify(records: Sequence[Tlsa], chain_der: Sequence[bytes], hostname: str,
           now: datetime | None = None) -> Match:
    """The first record the server's chain satisfies (DANE-EE first), else Mismatch."""
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as e:
        raise Mismatch(f"the server's certificate cannot be read: {e}") from None
    if not chain:
        raise Mismatch("the server sent no certificate")
    leaf, cas = chain[0], chain[1:]
    why: list[str] = []
    for record in (r for r in records if r.usage == DANE_EE):
        if record.matches(leaf):
            return Match(record, 0, leaf.subject.rfc4514_string())
        why.append(f"{record}: not the server's {'key' if record.selector else 'certificate'}")
    for record in (r for r in records if r.usage == DANE_TA):
        anchors = [(depth, ca) for depth, ca in enumerate(cas, 1) if record.matches(ca)]
        if not anchors:
            why.append(f"{record}: no CA certificate in the server's chain matches")
        for depth, anchor in anchors:
            try:
                _chain_to(anchor, leaf, cas, hostname, now)
            except VerificationError as e:
                why.append(f"{record}: matches {anchor.subject.rfc4514_string()}, but {e}")
                continue
            return Match(record, depth, anchor.subject.rfc4514_string())
    raise Mismatch("; ".join(why) or "no usable TLSA record")


def _chain_to(anchor: x509.Certificate, leaf: x509.Certificate,
              intermediates: list[x509.Certificate], hostname: str,
              now: datetime | None) -> None:
    """RFC 7672 3.1.2: a valid path from the server certificate to the matched CA, and
    the MX host name in the server certificate (wildcards per RFC 6125)."""
    verifier = (PolicyBuilder().store(Store([anchor])).time(now or datetime.now(UTC))
                .build_server_verifier(x509.DNSName(hostname)))
    verifier.verify(leaf, intermediates)
