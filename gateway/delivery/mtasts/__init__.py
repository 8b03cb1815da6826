"""MTA-STS (RFC 8461): a policy, a cached policy, and the store that keeps them.

A recipient domain publishes `_mta-sts.<domain>` TXT `v=STSv1; id=...` and a policy at
`https://mta-sts.<domain>/.well-known/mta-sts.txt`; in `enforce` mode it says: deliver
only to MX hosts matching its `mx` patterns, over TLS with a certificate valid for the
MX name. Fetched policies are kept in a PolicyStore for their `max_age` (RFC 8461 5.1),
so that a restart, or an attacker who hides the TXT record, does not forget them. The
store is a Protocol: `files` keeps one JSON file per domain beside the spool; a shared
database can keep them for several nodes. Beside this module: `policy` (strict parsing),
`files` (the file store), `fetch` (HTTPS with aiohttp) and `service` (discovery and the
cache logic, which answers per domain).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Mode = Literal["enforce", "testing", "none"]
MODES: tuple[Mode, ...] = ("enforce", "testing", "none")


@dataclass(frozen=True)
class StsPolicy:
    """One policy as published: mode, lifetime in seconds and the MX patterns."""

    mode: Mode
    max_age: int
    mx: tuple[str, ...] = ()

    def matches(self, host: str) -> bool:
        """RFC 8461 4.1: an exact name, or `*.` standing for exactly one leftmost label."""
        host = host.rstrip(".").lower()
        for pattern in self.mx:
            if pattern.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


@dataclass(frozen=True)
class CachedPolicy:
    """A policy as fetched for a domain under a TXT `id`, valid until `fetched + max_age`."""

    domain: str
    id: str
    policy: StsPolicy
    fetched: float  # Unix time

    @property
    def expires(self) -> float:
        return self.fetched + self.policy.max_age

    def valid(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.expires

    def to_json(self) -> dict[str, Any]:
        """The stored form: a versioned, readable JSON object."""
        return {"version": 1, "domain": self.domain, "id": self.id, "fetched": self.fetched,
                "mode": self.policy.mode, "max_age": self.policy.max_age,
                "mx": list(self.policy.mx)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CachedPolicy:
        """ValueError when the record is not one this version wrote."""
        try:
            if data["version"] != 1 or data["mode"] not in MODES:
                raise ValueError("unknown version or mode")
            policy = StsPolicy(data["mode"], int(data["max_age"]),
                               tuple(str(p) for p in data["mx"]))
            return cls(str(data["domain"]), str(data["id"]), policy, float(data["fetched"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a cached MTA-STS policy: {e}") from None


class StoreUnavailable(Exception):
    """The store cannot say whether it holds a policy (the class is then `unknown`)."""


class PolicyStore(Protocol):
    """Where fetched policies outlive the process; shared by every process of a node."""

    async def load(self, domain: str) -> CachedPolicy | None:
        """The policy last saved for `domain`, expired or not; None when there is none."""
        ...

    async def save(self, entry: CachedPolicy) -> None:
        """Keep `entry` for its domain, replacing what was there."""
        ...
