"""One recipient address -> one Decision: internal, tunnel, smime, unsafe or unknown.

First match wins (CONTRACT "Classes"). The daemon, `send-sikkert check` and
`GET /api/check` all ask this one classifier, so the answer a person gets before writing
is the answer the gateway acts on.
"""

from __future__ import annotations

import logging
from typing import Protocol

from gateway.model import Decision, RecipientClass
from gateway.policy.address import domain_matches, domain_of, normalise
from gateway.policy.sepo import SepoList

log = logging.getLogger(__name__)


class CertificateLookup(Protocol):
    """The certificate directory as the classifier sees it (gateway.directory.service)."""

    async def classify(self, address: str) -> Decision:
        """SMIME with the chosen certificate, UNSAFE with why, or UNKNOWN on a lookup error."""
        ...


class Classifier:
    """Classifies addresses; its lists are swapped whole (SIGHUP, a changed SEPO file)."""

    def __init__(self, internal_domains: tuple[str, ...], sepo: SepoList,
                 directory: CertificateLookup | None) -> None:
        self.internal_domains = tuple(internal_domains)
        self.sepo = sepo
        self.directory = directory

    async def classify(self, address: str) -> Decision:
        """Classify one address; InvalidAddress when it is not an address."""
        address = normalise(address)
        domain = domain_of(address)
        if domain_matches(domain, self.internal_domains):
            return Decision(address, RecipientClass.INTERNAL, f"{domain} is an internal domain")
        if domain in self.sepo:
            return Decision(address, RecipientClass.TUNNEL, f"{domain} is a SEPO member")
        if self.directory is None:
            return Decision(address, RecipientClass.UNSAFE, "no certificate directory configured")
        try:
            return await self.directory.classify(address)
        except Exception as e:  # a fault is never proof that secure mail is impossible
            log.exception("classifying %s failed", address)
            return Decision(address, RecipientClass.UNKNOWN, f"internal error: {e}")
