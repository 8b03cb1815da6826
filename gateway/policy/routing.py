"""Where a recipient's mail goes next: the internal route, the transport map or the default.

Like Postfix transport_maps: an exact domain first, then an entry with a leading dot for
its subdomains, then `routes.default`.
"""

from __future__ import annotations

from gateway.config import RoutesConfig
from gateway.policy.address import ascii_domain, domain_matches


class Routing:
    def __init__(self, routes: RoutesConfig, internal_domains: tuple[str, ...]) -> None:
        self.routes = routes
        self.internal_domains = internal_domains

    def route_for(self, domain: str) -> str:
        domain = ascii_domain(domain)
        if domain_matches(domain, self.internal_domains):
            return self.routes.internal
        transport = self.routes.transport
        if domain in transport:
            return transport[domain]
        parts = domain.split(".")
        for i in range(1, len(parts)):
            parent = "." + ".".join(parts[i:])
            if parent in transport:
                return transport[parent]
        return self.routes.default
