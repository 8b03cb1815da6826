"""Find a domain's mail hosts in DNS and deliver to the first that answers.

RFC 5321 5.1: MX records by preference, equal preferences in random order, and the
domain's own A/AAAA records when it has no MX (the implicit MX). RFC 7505: a null MX
("." as the only exchange) means the domain takes no mail: 556 5.1.10. A domain that
does not exist is 550 5.1.2; a DNS failure (SERVFAIL, timeout) is 4.4.3, never a bounce.
A host that cannot be reached, or answers 4xx, hands its recipients to the next host.
Under the `verify` TLS level the certificate must name the MX host we connected to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from gateway.config import HostPort
from gateway.delivery import Rcpt, Result, Route, TlsPolicy, same_reply
from gateway.delivery.smtp import HostFailure, Outgoing, SmtpTransport, describe_peer
from gateway.errors import DeliveryError, PermanentError, Reply, TransientError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MailHosts:
    """A domain's mail hosts, best first.

    `implicit`: the domain has no MX, so it is its own host. `literal`: the recipient
    domain was an address literal, so the one "host" is already an IP address.
    """

    hosts: list[str]
    implicit: bool = False
    literal: bool = False


class MxResolver:
    """DNS lookups for delivery, against the configured name servers or the system's."""

    def __init__(self, nameservers: Sequence[HostPort] = (), *, timeout: float = 10,
                 rng: random.Random | None = None) -> None:
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port)
                                         for ns in nameservers]
        else:
            try:
                self.resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # Every lookup then fails as a DNS error (4.4.3): mail waits, nothing is lost.
                log.error("no system resolver configured and no dns.nameservers given")
                self.resolver = dns.asyncresolver.Resolver(configure=False)
        self.resolver.lifetime = timeout
        self.rng = rng or random.Random()

    async def mail_hosts(self, domain: str) -> MailHosts:
        """The hosts to try for `domain`; PermanentError or TransientError when there are none."""
        try:
            name = dns.name.from_text(domain)
        except (dns.exception.DNSException, UnicodeError):
            raise PermanentError(reply=Reply(550, "5.1.2", f"{domain!r} is not a valid domain")
                                 ) from None
        try:
            answer = await self.resolver.resolve(name, "MX", search=False)
        except dns.resolver.NoAnswer:
            return MailHosts([domain.rstrip(".")], implicit=True)
        except dns.resolver.NXDOMAIN:
            raise PermanentError(reply=Reply(550, "5.1.2", f"domain {domain} does not exist")
                                 ) from None
        except dns.exception.DNSException as e:
            raise TransientError(reply=Reply(451, "4.4.3", f"DNS lookup of {domain} MX failed: "
                                                           f"{_brief(e)}")) from None
        records = [r for r in answer if r.exchange != dns.name.root]
        if not records:
            raise PermanentError(reply=Reply(556, "5.1.10", f"{domain} has a null MX (RFC 7505):"
                                                            " it accepts no mail"))
        self.rng.shuffle(records)  # the sort below is stable: equal preferences stay shuffled
        records.sort(key=lambda r: r.preference)
        return MailHosts([r.exchange.to_text(omit_final_dot=True) for r in records])

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of `host`; TransientError when DNS could not say."""
        answers = await asyncio.gather(*(self._addresses(host, rdtype)
                                         for rdtype in ("A", "AAAA")), return_exceptions=True)
        found = [a for answer in answers if isinstance(answer, list) for a in answer]
        errors = [e for e in answers if isinstance(e, BaseException)]
        if not found and errors:
            raise TransientError(reply=Reply(451, "4.4.3", f"DNS lookup of {host} failed: "
                                                           f"{_brief(errors[0])}"))
        return found

    async def _addresses(self, host: str, rdtype: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(host, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        return [r.address for r in answer]


class MxTransport:
    """Delivers to the mail hosts of the recipient domain, on a fixed port."""

    def __init__(self, smtp: SmtpTransport, resolver: MxResolver, *, port: int = 25,
                 max_addresses: int = 5) -> None:
        self.smtp = smtp
        self.resolver = resolver
        self.port = port
        self.max_addresses = max_addresses  # like Postfix smtp_mx_address_limit

    async def deliver(self, route: Route, domain: str, sender: str, rcpts: Sequence[Rcpt],
                      data: bytes, tls: TlsPolicy, *, queue_id: str, ret: str = "",
                      envid: str = "", smtputf8: bool = False) -> Result:
        """Try the domain's hosts in order until every recipient has a final reply."""
        message = Outgoing(sender, tuple(rcpts), data, queue_id, ret, envid, smtputf8)
        literal = _address_literal(domain)
        try:
            targets = (MailHosts([literal], literal=True) if literal
                       else await self.resolver.mail_hosts(domain))
        except DeliveryError as e:
            return same_reply(rcpts, e.reply)
        return await self._try_hosts(domain, targets, message, tls)

    async def _try_hosts(self, domain: str, targets: MailHosts, message: Outgoing,
                         tls: TlsPolicy) -> Result:
        pending = list(message.rcpts)
        final: dict[str, Reply] = {}
        deferred: dict[str, Reply] = {}  # the latest 4xx a host gave each recipient
        relayed: frozenset[str] = frozenset()  # accepted by a host that advertised DSN
        last: Reply | None = None
        tls_failure, tried, peer = False, 0, ""
        tls_version = tls_cipher = ""
        previous = ""  # what the host before this one said, logged once we move on
        for host in targets.hosts:
            if tried == self.max_addresses:
                break
            try:
                addresses = [host] if targets.literal else await self.resolver.addresses(host)
            except TransientError as e:
                last = e.reply
                continue
            for address in addresses:
                if tried == self.max_addresses:
                    break
                if previous:  # the last host's reply goes into the result, earlier ones here
                    log.info("%s: %s; trying the next host", message.queue_id, previous)
                tried += 1
                peer = describe_peer(address, self.port, host)
                tls_version = tls_cipher = ""
                try:
                    answer = await self.smtp.send(address, self.port, host,
                                                  replace(message, rcpts=tuple(pending)), tls)
                except HostFailure as e:
                    last = e.reply
                    tls_failure = tls_failure or e.tls
                    previous = f"{peer}: {e.reply}"
                    continue
                relayed |= answer.dsn_relayed
                tls_version, tls_cipher = answer.tls_version, answer.tls_cipher
                for addr, reply in answer.replies.items():
                    if 400 <= reply.code < 500:
                        deferred[addr] = reply
                    else:
                        final[addr] = reply
                pending = [r for r in pending if r.address not in final]
                previous = f"{peer}: " + ", ".join(f"<{r.address}> {deferred[r.address]}"
                                                   for r in pending)
                if not pending:
                    return Result(final, peer=peer, dsn_relayed=relayed,
                                  tls_version=tls_version, tls_cipher=tls_cipher)
        if last is None:  # no host had an address (a host that answered left `deferred`)
            last = (Reply(550, "5.1.2", f"{domain} has no MX and no address records")
                    if targets.implicit else
                    Reply(451, "4.4.4", f"no address found for the mail hosts of {domain}"))
        for r in pending:
            final[r.address] = deferred.get(r.address) or last
        return Result(final, tls_failure=tls_failure, peer=peer, dsn_relayed=relayed,
                      tls_version=tls_version, tls_cipher=tls_cipher)


def _address_literal(domain: str) -> str | None:
    """The IP address of an RFC 5321 4.1.3 address literal such as [192.0.2.1]."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    text = text[5:] if text[:5].lower() == "ipv6:" else text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _brief(error: BaseException) -> str:
    if isinstance(error, dns.resolver.NoNameservers):
        return "no name server answered (SERVFAIL or refused)"
    if isinstance(error, dns.exception.Timeout):
        return "timed out"
    return str(error) or type(error).__name__
