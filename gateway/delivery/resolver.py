"""The gateway's one DNS resolver: MX, A/AAAA, TLSA and TXT, with what DNSSEC says of each.

Every lookup for delivery and for DANE or MTA-STS goes through here, against
`dns.nameservers` (or the system's). Queries carry the DO bit and the AD flag (RFC 4035
3.2.1, RFC 6840 5.7), so a validating resolver reports in AD whether the answer is
DNSSEC-secure; the gateway trusts that bit as Postfix does (RFC 7672 2.1.1), which is why
the name servers should be a validating resolver on the same host. Each lookup has one
of three outcomes: a secure answer, an insecure one (both may be empty: NXDOMAIN or
NODATA), or a failure (SERVFAIL, REFUSED, a timeout), which is never taken as "no
records": callers make it `unknown` or a 4xx. Answers, negative ones included (RFC 2308),
are cached for their TTL; lookups are bounded by `timeout` and safe to run concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gateway.config import HostPort

log = logging.getLogger(__name__)

EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: larger answers come over TCP


class DnsFailure(Exception):
    """No answer could be had (SERVFAIL, REFUSED, timeout): the records are unknown."""


class InvalidName(ValueError):
    """The text is not a domain name that can be looked up."""


@dataclass(frozen=True)
class Lookup:
    """One answer: the records (dnspython rdata, empty for NXDOMAIN and NODATA) and AD.

    `secure` is the AD bit: the validating resolver vouches for the answer, or for the
    denial that there is one (RFC 4035 3.2.3).
    """

    name: str
    rdtype: str
    records: tuple[Any, ...]
    secure: bool
    nxdomain: bool = False


@dataclass(frozen=True)
class Addresses:
    """A host's IPv4 then IPv6 addresses; `secure` only when both answers were."""

    host: str
    addresses: tuple[str, ...]
    secure: bool


class DnsResolver:
    """Asynchronous lookups with DNSSEC status, cached with the records' TTLs."""

    def __init__(self, nameservers: Sequence[HostPort] = (), *, timeout: float = 10,
                 cache_size: int = 10000) -> None:
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port)
                                         for ns in nameservers]
        else:
            try:
                self.resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # Every lookup then fails: mail waits, nothing is lost, nothing bounces.
                log.error("no system resolver configured and no dns.nameservers given")
                self.resolver = dns.asyncresolver.Resolver(configure=False)
        self.timeout = timeout
        self.resolver.lifetime = timeout
        self.resolver.timeout = min(2.0, timeout)  # per server and try, within the lifetime
        self.resolver.use_edns(0, dns.flags.DO, EDNS_PAYLOAD)
        self.resolver.flags = dns.flags.RD | dns.flags.AD
        self.resolver.cache = dns.resolver.LRUCache(cache_size)

    async def lookup(self, name: str, rdtype: str) -> Lookup:
        """One RRset; DnsFailure when no server answered, InvalidName for a bad name."""
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError):
            raise InvalidName(f"{name!r} is not a valid domain name") from None
        text = qname.to_text(omit_final_dot=True)
        try:
            answer = await self.resolver.resolve(qname, rdtype, search=False,
                                                 raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            response = e.responses().get(qname)
            return Lookup(text, rdtype, (), _authenticated(response), nxdomain=True)
        except dns.exception.DNSException as e:
            raise DnsFailure(f"DNS lookup of {text} {rdtype} failed: {brief(e)}") from None
        records = tuple(answer.rrset) if answer.rrset is not None else ()
        return Lookup(text, rdtype, records, _authenticated(answer.response))

    async def addresses(self, host: str) -> Addresses:
        """A and AAAA at once; DnsFailure when one failed and the other gave no address."""
        answers = await asyncio.gather(self.lookup(host, "A"), self.lookup(host, "AAAA"),
                                       return_exceptions=True)
        found = [a for a in answers if isinstance(a, Lookup)]
        errors = [e for e in answers if isinstance(e, BaseException)]
        for e in errors:
            if not isinstance(e, DnsFailure | InvalidName):
                raise e
        addresses = tuple(r.address for a in found for r in a.records)
        if errors and not addresses:
            raise errors[0]
        # One family failing leaves the other's addresses usable, but not vouched for whole.
        secure = not errors and all(a.secure for a in found)
        return Addresses(host, addresses, secure)


def _authenticated(response: dns.message.Message | None) -> bool:
    return response is not None and bool(response.flags & dns.flags.AD)


def brief(error: BaseException) -> str:
    """A DNS error in a few words, for replies and logs."""
    if isinstance(error, dns.resolver.NoNameservers):
        return "no name server answered (SERVFAIL or refused)"
    if isinstance(error, dns.exception.Timeout):
        return "timed out"
    return str(error) or type(error).__name__
