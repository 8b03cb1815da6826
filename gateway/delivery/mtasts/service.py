"""What MTA-STS says of a recipient domain now: discovery, fetching and the cache (RFC 8461).

The TXT record `_mta-sts.<domain>` is looked up every time (the resolver caches it for
its TTL); a policy is fetched when none is cached, when the cached one has expired
(`max_age`) or when the TXT `id` differs from the cached one's (RFC 8461 5.1). A fetch
that fails is not tried again for the same `id` for five minutes (RFC 8461 3.3). A valid
cached policy is applied even when the TXT record has gone or the fetch fails, as the RFC
demands, so hiding the record does not downgrade a domain. The answer is one of three:
`secure` (a policy in `enforce` mode applies), `insecure` (no policy, or `testing` or
`none`), `failed` (the TXT record could not be looked up, or it announces a policy that
cannot be had and none is cached: the class is then `unknown`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from gateway.delivery.mtasts import CachedPolicy, PolicyStore, StoreUnavailable
from gateway.delivery.mtasts.fetch import FetchError, PolicyFetcher
from gateway.delivery.mtasts.policy import record_id
from gateway.delivery.resolver import DnsFailure, DnsResolver, InvalidName

log = logging.getLogger(__name__)

RETRY_AFTER = 300.0  # seconds before a failed fetch is tried again for the same id


@dataclass(frozen=True)
class StsAnswer:
    """MTA-STS's word on a domain, with the policy it rests on (if any)."""

    result: Literal["secure", "insecure", "failed"]
    reason: str
    entry: CachedPolicy | None = None


class MtaSts:
    """Per-domain MTA-STS answers; per-process memory in front of a shared PolicyStore."""

    def __init__(self, resolver: DnsResolver, fetcher: PolicyFetcher, store: PolicyStore, *,
                 clock: Callable[[], float] = time.time, retry_after: float = RETRY_AFTER
                 ) -> None:
        self.resolver = resolver
        self.fetcher = fetcher
        self.store = store
        self.clock = clock
        self.retry_after = retry_after
        self._memory: dict[str, CachedPolicy] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}  # (domain, id) -> until, why
        self._locks: dict[str, asyncio.Lock] = {}

    async def lookup(self, domain: str) -> StsAnswer:
        """The policy that applies to `domain` now, and whether it vouches for TLS."""
        domain = domain.rstrip(".").lower()
        txt_error = ""
        try:
            txt = await self.resolver.lookup(f"_mta-sts.{domain}", "TXT")
            announced = record_id(_texts(txt.records))
        except DnsFailure as e:
            announced, txt_error = None, str(e)
        except InvalidName as e:
            return StsAnswer("insecure", str(e))
        try:
            cached = await self._cached(domain)
        except StoreUnavailable as e:
            return StsAnswer("failed", f"the MTA-STS policy cache is unavailable: {e}")
        if announced is not None and (cached is None or cached.id != announced):
            fresh = await self._refresh(domain, announced)
            if isinstance(fresh, CachedPolicy):
                cached = fresh
            elif cached is None:
                return StsAnswer("failed", f"_mta-sts.{domain} announces an MTA-STS policy "
                                           f"(id {announced}), but {fresh}")
            else:
                log.info("MTA-STS: keeping the cached policy of %s (id %s): %s", domain,
                         cached.id, fresh)
        if cached is None:
            if txt_error:
                return StsAnswer("failed", txt_error)
            return StsAnswer("insecure", f"{domain} publishes no MTA-STS policy")
        return _answer(cached)

    async def _cached(self, domain: str) -> CachedPolicy | None:
        """A valid cached policy: this process's copy, else the store's."""
        now = self.clock()
        entry = self._memory.get(domain)
        if entry is None or not entry.valid(now):
            entry = await self.store.load(domain)
            if entry is not None:
                self._memory[domain] = entry
        return entry if entry is not None and entry.valid(now) else None

    async def _refresh(self, domain: str, announced: str) -> CachedPolicy | str:
        """The policy for `announced`, from the store or fetched; or why it cannot be had."""
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:  # one fetch per domain; the others wait and take its result
            now = self.clock()
            try:
                stored = await self.store.load(domain)  # another process may have fetched it
            except StoreUnavailable as e:
                return f"the MTA-STS policy cache is unavailable: {e}"
            if stored is not None and stored.id == announced and stored.valid(now):
                self._memory[domain] = stored
                return stored
            until, why = self._failed.get((domain, announced), (0.0, ""))
            if now < until:
                return why
            try:
                policy = await self.fetcher.fetch(domain)
            except FetchError as e:
                log.warning("MTA-STS: cannot fetch the policy of %s (id %s): %s", domain,
                            announced, e)
                self._failed = {k: v for k, v in self._failed.items() if v[0] > now}
                self._failed[(domain, announced)] = (now + self.retry_after, str(e))
                return str(e)
            self._failed.pop((domain, announced), None)
            entry = CachedPolicy(domain, announced, policy, now)
            log.info("MTA-STS: fetched the policy of %s: id %s, mode %s, max_age %d, mx %s",
                     domain, announced, policy.mode, policy.max_age,
                     ", ".join(policy.mx) or "-")
            try:
                await self.store.save(entry)
            except (OSError, StoreUnavailable) as e:  # still valid; fetched again next time
                log.warning("MTA-STS: cannot cache the policy of %s: %s", domain, e)
            self._memory[domain] = entry
            return entry


def _texts(records: tuple[object, ...]) -> list[str]:
    """Each TXT record's strings joined without spaces (RFC 8461 3.1); non-ASCII dropped."""
    texts = []
    for r in records:
        raw = b"".join(getattr(r, "strings", ()))
        try:
            texts.append(raw.decode("ascii"))
        except UnicodeDecodeError:
            continue
    return texts


def _answer(entry: CachedPolicy) -> StsAnswer:
    policy = entry.policy
    if policy.mode == "enforce":
        return StsAnswer("secure", f"MTA-STS policy of {entry.domain} (id {entry.id}) in "
                                   f"enforce mode", entry)
    return StsAnswer("insecure", f"the MTA-STS policy of {entry.domain} is in {policy.mode} "
                                 f"mode, which does not require verified TLS", entry)
