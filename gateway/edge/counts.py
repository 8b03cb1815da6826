"""Open SMTP connections counted across every worker process, in one shared table.

The limits of `smtp.max_connections` and `smtp.max_connections_per_client` hold for the
gateway as a whole, while each worker accepts its own connections. The supervisor makes
a small shared memory table (memfd) that every worker maps: one row per worker, a total
and 4096 per-client slots (the client address hashed with CRC-32, the same in every
process). A worker writes only its own row and reads everyone's, so no lock is needed;
the supervisor zeroes a dead worker's row, whose connections died with it. Two clients
sharing a slot are counted together, which errs on the side of refusing.
"""

from __future__ import annotations

import mmap
import os
import zlib
from collections import Counter

SLOTS = 4096
_CELL = 4  # bytes of one unsigned counter


class LocalCounts:
    """The counts of one process alone (one worker, or tests)."""

    def __init__(self) -> None:
        self._open: Counter[str] = Counter()
        self._total = 0

    def total(self) -> int:
        return self._total

    def of(self, client: str) -> int:
        return self._open[client]

    def add(self, client: str, delta: int) -> None:
        self._total += delta
        self._open[client] += delta
        if self._open[client] <= 0:
            del self._open[client]


def table_size(workers: int) -> int:
    return workers * (SLOTS + 1) * _CELL


def create_table(workers: int) -> int:
    """The supervisor's shared table: a memfd its workers inherit."""
    fd = os.memfd_create("send-sikkert-connections", 0)  # MFD_CLOEXEC off: inherited
    os.ftruncate(fd, table_size(workers))
    return fd


class SharedCounts:
    """One worker's view of the shared table (`index` is its row)."""

    def __init__(self, fd: int, workers: int, index: int) -> None:
        self._map = mmap.mmap(fd, table_size(workers))
        self._cells = memoryview(self._map).cast("I")
        self._workers = workers
        self._row = index * (SLOTS + 1)

    def total(self) -> int:
        return sum(self._cells[w * (SLOTS + 1)] for w in range(self._workers))

    def of(self, client: str) -> int:
        slot = 1 + _slot(client)
        return sum(self._cells[w * (SLOTS + 1) + slot] for w in range(self._workers))

    def add(self, client: str, delta: int) -> None:
        self._cells[self._row] += delta
        self._cells[self._row + 1 + _slot(client)] += delta

    def clear_row(self) -> None:
        """Zero this row (the supervisor, for a worker that died)."""
        self._cells[self._row:self._row + SLOTS + 1] = memoryview(
            bytes((SLOTS + 1) * _CELL)).cast("I")


def _slot(client: str) -> int:
    return zlib.crc32(client.encode("utf-8", "surrogateescape")) % SLOTS
