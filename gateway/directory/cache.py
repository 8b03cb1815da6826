"""Remember directory answers for a while: address -> the DER certificates found for it.

A found set lives `ttl` seconds, a "nothing published" answer `negative_ttl` seconds (a
recipient who publishes a certificate later is picked up that much later). The cache holds
at most `max_size` addresses and drops the least recently used first. Failures are never
stored: they are exceptions and never reach put(). clear() is for SIGHUP, forget() for an
address whose answer has just changed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class LookupCache:
    """A bounded LRU map from address to certificates, with separate positive and negative TTLs."""

    def __init__(
        self,
        ttl: float,
        negative_ttl: float,
        max_size: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or negative_ttl < 0 or max_size < 0:
            raise ValueError("ttl, negative_ttl and max_size must not be negative")
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, tuple[bytes, ...]]] = OrderedDict()

    def get(self, address: str) -> list[bytes] | None:
        """The cached certificates ([] for a cached "none"), or None when unknown or expired."""
        entry = self._entries.get(address)
        if entry is None:
            return None
        expires, certs = entry
        if self._clock() >= expires:
            del self._entries[address]
            return None
        self._entries.move_to_end(address)
        return list(certs)

    def put(self, address: str, certs: list[bytes]) -> None:
        """Remember an answer; a TTL or size of 0 means this kind of answer is not kept."""
        ttl = self._ttl if certs else self._negative_ttl
        if ttl <= 0 or self._max_size == 0:
            return
        self._entries[address] = (self._clock() + ttl, tuple(certs))
        self._entries.move_to_end(address)
        while len(self._entries) > self._max_size:
            self._entries.popitem(last=False)

    def forget(self, address: str) -> None:
        """Drop one address's answer, which has just changed."""
        self._entries.pop(address, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
