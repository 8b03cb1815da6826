"""Remember the certificates a recipient's mail may be encrypted to, for a few minutes.

Path validation of a recipient certificate (RFC 5280 6, with pyhanko-certvalidator)
costs more than signing a message, and the same recipients get mail again and again.
A choice of certificate (class SMIME) is kept for the same address, the same
certificates from the directory and the very same CRLs; it is used only between the
moment it was made and the earliest of: `ttl` seconds later, the end of validity of
any certificate it was made from (the trust anchors and intermediates included), and
the nextUpdate of any CRL held (RFC 5280 5.1.2.5: then hard-fail must judge again). A
refreshed CRL is another object, so every choice made before it is judged anew.
Unsafe and unknown answers are never kept: they are cheap, or must be asked again.
Per process, bounded, least recently used dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class _Kept(Generic[T]):
    value: T
    made: datetime
    until: datetime
    crls: tuple[object, ...]  # held, so their identity cannot be reused by others


class ChoiceCache(Generic[T]):
    """(address, certificates) -> a choice, valid from when it was made until it expires."""

    def __init__(self, ttl: float = 300.0, max_size: int = 10_000) -> None:
        self.ttl = timedelta(seconds=ttl)
        self.max_size = max_size
        self._kept: OrderedDict[tuple[str, tuple[bytes, ...]], _Kept[T]] = OrderedDict()

    def get(self, address: str, ders: Sequence[bytes], moment: datetime,
            crls: Sequence[object]) -> T | None:
        """The kept choice, or None when there is none for this moment and these CRLs."""
        key = (address, tuple(ders))
        kept = self._kept.get(key)
        if kept is None:
            return None
        if not kept.made <= moment < kept.until or not _same(kept.crls, crls):
            if moment >= kept.made:  # out of date; an earlier moment leaves it be
                del self._kept[key]
            return None
        self._kept.move_to_end(key)
        return kept.value

    def put(self, address: str, ders: Sequence[bytes], value: T, moment: datetime,
            crls: Sequence[object], valid_until: datetime) -> None:
        """Keep `value` from `moment` until `valid_until` or the TTL, whichever is first."""
        until = min(moment + self.ttl, valid_until)
        if until <= moment or self.max_size <= 0:
            return
        key = (address, tuple(ders))
        self._kept[key] = _Kept(value, moment, until, tuple(crls))
        self._kept.move_to_end(key)
        while len(self._kept) > self.max_size:
            self._kept.popitem(last=False)


def _same(kept: tuple[object, ...], current: Sequence[object]) -> bool:
    return len(kept) == len(current) and all(a is b for a, b in zip(kept, current, strict=True))
