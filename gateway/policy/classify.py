"""One recipient address -> one Decision: internal, tunnel, smime, unsafe or unknown.

First match wins (CONTRACT "Classes", "DANE and MTA-STS"): internal, tunnel by the SEPO
list, smime, tunnel by DANE then MTA-STS, unsafe. The daemon, `send-sikkert check` and
`GET /api/check` all ask this one classifier, so the answer a person gets before writing
is the answer the gateway acts on. DANE and MTA-STS speak for the MX hosts of a domain,
so they count only for domains delivered by `mx`; they are asked through a small
protocol, implemented beside delivery, which this module does not import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from gateway.model import Decision, RecipientClass, TransportCheck
from gateway.policy.address import domain_matches, domain_of, normalise
from gateway.policy.routing import Routing
from gateway.policy.sepo import SepoList

log = logging.getLogger(__name__)


class CertificateLookup(Protocol):
    """The certificate directory as the classifier sees it (gateway.directory.service)."""

    async def classify(self, address: str) -> Decision:
        """SMIME with the chosen certificate, UNSAFE with why, or UNKNOWN on a lookup error."""
        ...


class TransportLookup(Protocol):
    """DANE and MTA-STS as the classifier sees them (gateway.delivery.security)."""

    async def check(self, domain: str) -> TransportCheck:
        """Whether either vouches for verified TLS to the domain's mail hosts."""
        ...


class Classifier:
    """Classifies addresses; its lists are swapped whole (SIGHUP, a changed SEPO file)."""

    def __init__(self, internal_domains: tuple[str, ...], sepo: SepoList,
                 directory: CertificateLookup | None, transport: TransportLookup | None = None,
                 routing: Routing | None = None) -> None:
        self.internal_domains = tuple(internal_domains)
        self.sepo = sepo
        self.directory = directory
        self.transport = transport  # None: both transport_security switches are off
        self.routing = routing  # None: every domain goes by mx

    async def classify(self, address: str) -> Decision:
        """Classify one address; InvalidAddress when it is not an address."""
        address = normalise(address)
        domain = domain_of(address)
        if domain_matches(domain, self.internal_domains):
            return Decision(address, RecipientClass.INTERNAL, f"{domain} is an internal domain")
        if domain in self.sepo:
            return Decision(address, RecipientClass.TUNNEL, f"{domain} is a SEPO member",
                            mechanism="sepo")
        route = self.routing.route_for(domain) if self.routing else "mx"
        # Asked at once beside the directory, and dropped when the directory decides.
        transport = (asyncio.create_task(self._transport(domain))
                     if self.transport is not None and route == "mx" else None)
        try:
            decision = await self._directory(address)
            if decision.cls != RecipientClass.UNSAFE or self.transport is None:
                return decision
            if transport is None:
                return _unsafe(decision, f"DANE and MTA-STS count only for mail delivered by "
                                         f"mx, and {domain} goes via {route}")
            check = await transport
        finally:
            if transport is not None and not transport.done():
                transport.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await transport
        if check.result == "secure":
            return Decision(address, RecipientClass.TUNNEL, check.reason,
                            mechanism=check.mechanism)
        if check.result == "failed":
            return Decision(address, RecipientClass.UNKNOWN, check.reason)
        return _unsafe(decision, check.reason)

    async def _directory(self, address: str) -> Decision:
        if self.directory is None:
            return Decision(address, RecipientClass.UNSAFE, "no certificate directory configured")
        try:
            return await self.directory.classify(address)
        except Exception as e:  # a fault is never proof that secure mail is impossible
            log.exception("classifying %s failed", address)
            return Decision(address, RecipientClass.UNKNOWN, f"internal error: {e}")

    async def _transport(self, domain: str) -> TransportCheck:
        assert self.transport is not None
        try:
            return await self.transport.check(domain)
        except Exception as e:  # as above: unknown, never unsafe
            log.exception("checking DANE and MTA-STS for %s failed", domain)
            return TransportCheck("failed", "", f"internal error: {e}")


def _unsafe(decision: Decision, why: str) -> Decision:
    return Decision(decision.address, RecipientClass.UNSAFE, f"{decision.reason}; {why}")
