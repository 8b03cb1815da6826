"""Find a domain's mail hosts in DNS and deliver to the first that answers.

RFC 5321 5.1: MX records by preference, equal preferences in random order, and the
domain's own A/AAAA records when it has no MX (the implicit MX). RFC 7505: a null MX
("." as the only exchange) means the domain takes no mail: 556 5.1.10. A domain that
does not exist is 550 5.1.2; a DNS failure (SERVFAIL, timeout) is 4.4.3, never a bounce.
A host that cannot be reached, or answers 4xx, hands its recipients to the next host.
Under the `verify` TLS level the certificate must name the MX host we connected to.

The per-destination TLS levels are resolved here, host by host. `dane` and `dane-only`
(RFC 7672 2.2): TLSA records count only when the MX answer and the host's addresses are
DNSSEC-secure; a host whose TLSA lookup fails is skipped, never tried without them.
`mta-sts` (RFC 8461 4, 5): only the MX hosts the domain's policy in enforce mode names,
each under `verify`; without such a policy the recipients wait (4.7.5).
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import dns.name

from gateway.delivery import Rcpt, Result, Route, TlsPolicy, same_reply
from gateway.delivery.dane import lookup_tlsa
from gateway.delivery.mtasts.service import MtaSts
from gateway.delivery.resolver import Addresses, DnsFailure, DnsResolver, InvalidName
from gateway.delivery.smtp import HostFailure, Outgoing, SmtpTransport, describe_peer
from gateway.errors import DeliveryError, PermanentError, Reply, TransientError
from gateway.spool.body import MessageData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MailHosts:
    """A domain's mail hosts, best first.

    `implicit`: the domain has no MX, so it is its own host. `literal`: the recipient
    domain was an address literal, so the one "host" is already an IP address.
    `secure`: DNSSEC vouched for the MX answer (or for its absence, when implicit).
    """

    hosts: list[str]
    implicit: bool = False
    literal: bool = False
    secure: bool = False


class MxResolver:
    """The MX view of the gateway's DNS resolver: mail hosts and their addresses."""

    def __init__(self, resolver: DnsResolver, *, rng: random.Random | None = None) -> None:
        self.dns = resolver
        self.rng = rng or random.Random()

    async def mail_hosts(self, domain: str) -> MailHosts:
        """The hosts to try for `domain`; PermanentError or TransientError when there are none."""
        try:
            answer = await self.dns.lookup(domain, "MX")
        except InvalidName:
            raise PermanentError(reply=Reply(550, "5.1.2", f"{domain!r} is not a valid domain")
                                 ) from None
        except DnsFailure as e:
            raise TransientError(reply=Reply(451, "4.4.3", str(e))) from None
        if answer.nxdomain:
            raise PermanentError(reply=Reply(550, "5.1.2", f"domain {domain} does not exist"))
        if not answer.records:
            return MailHosts([answer.name], implicit=True, secure=answer.secure)
        records = [r for r in answer.records if r.exchange != dns.name.root]
        if not records:
            raise PermanentError(reply=Reply(556, "5.1.10", f"{domain} has a null MX (RFC 7505):"
                                                            " it accepts no mail"))
        self.rng.shuffle(records)  # the sort below is stable: equal preferences stay shuffled
        records.sort(key=lambda r: r.preference)
        return MailHosts([r.exchange.to_text(omit_final_dot=True) for r in records],
                         secure=answer.secure)

    async def addresses(self, host: str) -> Addresses:
        """IPv4 then IPv6 addresses of `host`; TransientError when DNS could not say."""
        try:
            return await self.dns.addresses(host)
        except (DnsFailure, InvalidName) as e:
            raise TransientError(reply=Reply(451, "4.4.3", str(e))) from None


class MxTransport:
    """Delivers to the mail hosts of the recipient domain, on a fixed port."""

    def __init__(self, smtp: SmtpTransport, resolver: MxResolver, *, port: int = 25,
                 max_addresses: int = 5, mta_sts: MtaSts | None = None) -> None:
        self.smtp = smtp
        self.resolver = resolver
        self.port = port
        self.max_addresses = max_addresses  # like Postfix smtp_mx_address_limit
        self.mta_sts = mta_sts

    async def deliver(self, route: Route, domain: str, sender: str, rcpts: Sequence[Rcpt],
                      data: MessageData, tls: TlsPolicy, *, queue_id: str, ret: str = "",
                      envid: str = "", smtputf8: bool = False) -> Result:
        """Try the domain's hosts in order until every recipient has a final reply."""
        message = Outgoing(sender, tuple(rcpts), data, queue_id, ret, envid, smtputf8)
        literal = _address_literal(domain)
        try:
            targets = (MailHosts([literal], literal=True) if literal
                       else await self.resolver.mail_hosts(domain))
            if tls.level == "mta-sts":
                targets = await self._sts_hosts(domain, targets, queue_id)
                tls = replace(tls, level="verify")
            elif tls.level == "dane-only" and not targets.secure:
                raise HostFailure(Reply(451, "4.7.5", f"DANE: the MX records of {domain} are "
                                                      "not DNSSEC-signed"), tls=True)
        except DeliveryError as e:
            return same_reply(rcpts, e.reply)
        except HostFailure as e:
            return same_reply(rcpts, e.reply, tls_failure=True)
        return await self._try_hosts(domain, targets, message, tls)

    async def _sts_hosts(self, domain: str, targets: MailHosts, queue_id: str) -> MailHosts:
        """The MX hosts an MTA-STS policy in enforce mode allows; HostFailure without one."""
        if self.mta_sts is None or targets.literal:
            raise HostFailure(Reply(451, "4.7.5", f"MTA-STS does not apply to {domain}"),
                              tls=True)
        answer = await self.mta_sts.lookup(domain)
        if answer.result != "secure" or answer.entry is None:
            raise HostFailure(Reply(451, "4.7.5", f"MTA-STS: {answer.reason}"), tls=True)
        policy = answer.entry.policy
        hosts = [h for h in targets.hosts if policy.matches(h)]
        if not hosts:
            raise HostFailure(Reply(451, "4.7.5", f"MTA-STS: no mail host of {domain} "
                                                  f"({', '.join(targets.hosts)}) matches its "
                                                  f"policy (mx: {', '.join(policy.mx)})"),
                              tls=True)
        log.info("%s: MTA-STS: %s (id %s) allows %s", queue_id, domain, answer.entry.id,
                 ", ".join(hosts))
        return replace(targets, hosts=hosts)

    async def _host_tls(self, tls: TlsPolicy, targets: MailHosts, found: Addresses
                        ) -> TlsPolicy:
        """The session level for one host; HostFailure when it must not be used."""
        if tls.level not in ("dane", "dane-only"):
            return tls
        only = tls.level == "dane-only"
        if not (targets.secure and found.secure):
            if only:
                raise HostFailure(Reply(451, "4.7.5", f"DANE: the addresses of {found.host} "
                                                      "are not DNSSEC-signed"), tls=True)
            return replace(tls, level="may")
        try:
            tlsa = await lookup_tlsa(self.resolver.dns, found.host, self.port)
        except DnsFailure as e:  # RFC 7672 2.2: such a host is not used, with or without TLS
            raise HostFailure(Reply(451, "4.7.5", f"DANE: {e}"), tls=True) from None
        if tlsa.usable:
            return replace(tls, level="dane", tlsa=tlsa.usable)
        if only:
            raise HostFailure(Reply(451, "4.7.5", f"DANE: {tlsa.describe()}"), tls=True)
        # Signed records, none usable: TLS is still mandatory, unauthenticated (RFC 7672 2.2).
        return replace(tls, level="encrypt" if tlsa.secure and tlsa.records else "may")

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
                found = (Addresses(host, (host,), False) if targets.literal
                         else await self.resolver.addresses(host))
                if not found.addresses:
                    continue
                host_tls = await self._host_tls(tls, targets, found)
            except TransientError as e:
                last = e.reply
                continue
            except HostFailure as e:  # a host DANE forbids: not even connected to
                last, tls_failure = e.reply, True
                previous = f"{host}: {e.reply}"
                continue
            for address in found.addresses:
                if tried == self.max_addresses:
                    break
                if previous:  # the last host's reply goes into the result, earlier ones here
                    log.info("%s: %s; trying the next host", message.queue_id, previous)
                tried += 1
                peer = describe_peer(address, self.port, host)
                tls_version = tls_cipher = ""
                try:
                    answer = await self.smtp.send(address, self.port, host,
                                                  replace(message, rcpts=tuple(pending)),
                                                  host_tls)
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

