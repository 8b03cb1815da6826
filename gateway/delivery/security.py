"""May DANE or MTA-STS vouch for verified TLS to a recipient domain? The classifier's answer.

CONTRACT "DANE and MTA-STS": DANE first, then MTA-STS, each behind its switch. DANE
(RFC 7672 2.2) vouches when the MX RRset, and for every MX host both its addresses and
its TLSA RRset (`_<port>._tcp.<host>`), are DNSSEC-secure and every host has a usable
record; MTA-STS (RFC 8461) when the domain's policy is in enforce mode and names at least
one of its MX hosts. A lookup that fails, where its answer could still matter, makes the
answer `failed` (the class `unknown`); a failed DANE lookup is never overridden by MTA-STS
(RFC 8461 2). All lookups of one domain run at once, each bounded by `dns.timeout`, the
policy fetch by `transport_security.policy_timeout`. Each answer is counted in
`sendsikkert_tls_policy_total`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Literal

from gateway.config import Config, ConfigError
from gateway.delivery.dane import HostTlsa, lookup_tlsa
from gateway.delivery.mtasts import PolicyStore
from gateway.delivery.mtasts.fetch import PolicyFetcher
from gateway.delivery.mtasts.files import FilePolicyStore
from gateway.delivery.mtasts.service import MtaSts
from gateway.delivery.mx import MailHosts, MxResolver
from gateway.delivery.resolver import Addresses, DnsFailure, DnsResolver
from gateway.errors import PermanentError, TransientError
from gateway.model import TransportCheck
from gateway.observe import metrics

log = logging.getLogger(__name__)


class TransportSecurity:
    """DANE (when `dane`) and MTA-STS (when `mta_sts` is given) for the classifier."""

    def __init__(self, mx: MxResolver, *, dane: bool, mta_sts: MtaSts | None,
                 port: int = 25) -> None:
        self.mx = mx
        self.dane = dane
        self.mta_sts = mta_sts
        self.port = port  # routes.mx_port: TLSA records are per port

    async def check(self, domain: str) -> TransportCheck:
        """`secure` with the mechanism that vouched, `insecure` with why not, or `failed`."""
        domain = domain.rstrip(".").lower()
        why = []
        if self.dane:
            answer = await self._dane(domain)
            _count(answer)
            if answer.result != "insecure":
                return answer
            why.append(answer.reason)
        if self.mta_sts is not None:
            answer = await self._mta_sts(domain)
            _count(answer)
            if answer.result != "insecure":
                return answer
            why.append(answer.reason)
        return TransportCheck("insecure", "", "; ".join(why))

    async def _mail_hosts(self, domain: str, mechanism: Literal["dane", "mta_sts"]
                          ) -> MailHosts | TransportCheck:
        """The domain's MX hosts, or the answer their lookup already settles."""
        name = "DANE" if mechanism == "dane" else "MTA-STS"
        try:
            return await self.mx.mail_hosts(domain)
        except TransientError as e:
            return TransportCheck("failed", mechanism, f"{name}: {e.reply.text}")
        except PermanentError as e:
            return TransportCheck("insecure", mechanism, f"no {name}: {e.reply.text}")

    async def _dane(self, domain: str) -> TransportCheck:
        targets = await self._mail_hosts(domain, "dane")
        if isinstance(targets, TransportCheck):
            return targets
        if not targets.secure:
            return TransportCheck("insecure", "dane", f"no DANE: the MX records of {domain} "
                                                      "are not DNSSEC-signed")
        hosts = await asyncio.gather(*(self._dane_host(h) for h in targets.hosts))
        for result in ("insecure", "failed"):  # one host without DANE settles it
            for answer in hosts:
                if answer.result == result:
                    return answer
        return TransportCheck("secure", "dane", f"DANE: DNSSEC-signed TLSA records require "
                                                f"verified TLS to {', '.join(targets.hosts)}")

    async def _dane_host(self, host: str) -> TransportCheck:
        dns = self.mx.dns
        found, tlsa = await asyncio.gather(dns.addresses(host), lookup_tlsa(dns, host, self.port),
                                           return_exceptions=True)
        for answer in (found, tlsa):
            if isinstance(answer, BaseException) and not isinstance(answer, DnsFailure):
                raise answer  # a bug: the classifier makes it `unknown`
        if isinstance(found, DnsFailure):
            return TransportCheck("failed", "dane", f"DANE: {found}")
        assert isinstance(found, Addresses)
        if not found.addresses:
            return TransportCheck("insecure", "dane", f"no DANE: {host} has no address")
        if not found.secure:
            return TransportCheck("insecure", "dane", f"no DANE: the addresses of {host} are "
                                                      "not DNSSEC-signed")
        if isinstance(tlsa, DnsFailure):
            return TransportCheck("failed", "dane", f"DANE: {tlsa}")
        assert isinstance(tlsa, HostTlsa)
        if not tlsa.usable:
            return TransportCheck("insecure", "dane", f"no DANE: {tlsa.describe()}")
        log.debug("DANE: %s", tlsa.describe())
        return TransportCheck("secure", "dane", host)

    async def _mta_sts(self, domain: str) -> TransportCheck:
        assert self.mta_sts is not None
        answer = await self.mta_sts.lookup(domain)
        if answer.result == "failed":
            return TransportCheck("failed", "mta_sts", f"MTA-STS: {answer.reason}")
        if answer.result == "insecure" or answer.entry is None:
            return TransportCheck("insecure", "mta_sts", f"no MTA-STS: {answer.reason}")
        targets = await self._mail_hosts(domain, "mta_sts")
        if isinstance(targets, TransportCheck):
            return targets
        policy = answer.entry.policy
        allowed = [h for h in targets.hosts if policy.matches(h)]
        if not allowed:
            return TransportCheck("insecure", "mta_sts",
                                  f"no MTA-STS: the policy of {domain} (mx: "
                                  f"{', '.join(policy.mx)}) names none of its mail hosts "
                                  f"({', '.join(targets.hosts)})")
        return TransportCheck("secure", "mta_sts",
                              f"MTA-STS: {domain} requires verified TLS (policy id "
                              f"{answer.entry.id}, enforce) to {', '.join(allowed)}")


def _count(answer: TransportCheck) -> None:
    metrics.tls_policy.labels(mechanism=answer.mechanism, result=answer.result).inc()


@dataclass(frozen=True)
class TransportParts:
    """The resolver and MTA-STS service delivery shares with the classifier's lookup."""

    resolver: DnsResolver
    mta_sts: MtaSts | None  # None: transport_security.mta_sts is off
    lookup: TransportSecurity | None  # None: both switches are off


def open_transport_security(config: Config, store: PolicyStore | None = None
                            ) -> TransportParts:
    """Build them from `[dns]`, `[transport_security]` and `routes.mx_port`.

    MTA-STS policies are kept in `store`, by default files in `<spool.dir>/mta-sts/`.
    ConfigError when `transport_security.ca_file` cannot be used.
    """
    resolver = DnsResolver(config.dns.nameservers, timeout=config.dns.timeout)
    settings = config.transport_security
    if settings.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(settings.ca_file))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(config.path, "transport_security.ca_file",
                              f"cannot load {settings.ca_file}: {e}") from None
    mta_sts = None
    if settings.mta_sts:
        fetcher = PolicyFetcher(resolver, ca_file=settings.ca_file, port=settings.policy_port,
                                timeout=settings.policy_timeout)
        mta_sts = MtaSts(resolver, fetcher, store or FilePolicyStore(config.spool.dir / "mta-sts"))
    lookup = None
    if settings.dane or settings.mta_sts:
        lookup = TransportSecurity(MxResolver(resolver), dane=settings.dane, mta_sts=mta_sts,
                                   port=config.routes.mx_port)
    return TransportParts(resolver, mta_sts, lookup)
