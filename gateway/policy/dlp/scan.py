"""Scan one message for CPR numbers, off the event loop: extraction, then the detector.

Small messages are scanned in a worker thread (cheap, no copying); larger ones in a
worker process, so a 40 MB PDF never holds the daemon's interpreter lock while other SMTP
sessions, deliveries and the HTTP API wait. A message left in its spool file is read
there by the worker process itself, so the daemon never holds it. The worker holds no
state: every process of the daemon may have its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from gateway.config import DlpConfig
from gateway.policy.dlp.cpr import Reason, find_cpr_numbers
from gateway.policy.dlp.extract import Gap, Limits, Where, extract

log = logging.getLogger(__name__)

INLINE_MAX = 256 * 1024  # bytes: up to this size a message is scanned in a thread


@dataclass(frozen=True)
class Finding:
    """One CPR number in one place of a message; the number itself only masked."""

    where: Where
    name: str  # the attachment's file name, "" for the subject and the body
    masked: str  # DDMMYY-XXXX
    reason: Reason

    @property
    def place(self) -> tuple[str, str]:
        return (self.where, self.name)


@dataclass(frozen=True)
class ScanResult:
    findings: tuple[Finding, ...]
    gaps: tuple[Gap, ...]
    seconds: float = 0.0

    @property
    def found(self) -> bool:
        return bool(self.findings)

    @property
    def places(self) -> tuple[tuple[str, str], ...]:
        """Each (where, name) with a finding, in the order found."""
        return tuple(dict.fromkeys(f.place for f in self.findings))


def scan_message(data: bytes, limits: Limits | None = None) -> ScanResult:
    """Every CPR number in the message, once per number and place."""
    started = time.perf_counter()
    extraction = extract(data, limits)
    seen: set[tuple[str, str, str]] = set()
    findings = []
    for text in extraction.texts:
        for m in find_cpr_numbers(text.text):
            key = (text.where, text.name, m.digits)
            if key not in seen:
                seen.add(key)
                findings.append(Finding(text.where, text.name, m.masked, m.reason))
    return ScanResult(tuple(findings), tuple(extraction.gaps), time.perf_counter() - started)


def scan_file(path: Path, limits: Limits | None = None, size: int = -1) -> ScanResult:
    """`scan_message` of the message in a file, its first `size` bytes (-1: all), in the
    worker process that reads it (a spool file holds its envelope after the message)."""
    with open(path, "rb") as f:
        return scan_message(f.read(size), limits)


def limits_from(config: DlpConfig) -> Limits:
    """The `[dlp]` limits as the extractor takes them."""
    return Limits(max_bytes=config.max_bytes, max_parts=config.max_parts,
                  max_depth=config.max_depth, max_pdf_pages=config.max_pdf_pages)


def describe_places(places: tuple[tuple[str, str], ...]) -> str:
    """ "the body and the attachment bilag.pdf": for logs and diagnostics, never a number."""
    names = [f"the attachment {name}" if name else "an unnamed attachment"
             if where == "attachment" else f"the {where}" for where, name in places]
    if len(names) <= 1:
        return names[0] if names else "nothing"
    return f"{', '.join(names[:-1])} and {names[-1]}"


class ScanFailed(Exception):
    """The scan could not run (its worker process died); the attempt is deferred."""


class Scanner:
    """Runs `scan_message` without blocking the event loop."""

    def __init__(self, limits: Limits | None = None, workers: int = 1,
                 inline_max: int = INLINE_MAX) -> None:
        self.limits = limits or Limits()
        self.workers = workers
        self.inline_max = inline_max
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    async def scan(self, data: bytes | Path, size: int = -1) -> ScanResult:
        """The scan of a message in memory, or of the one in the first `size` bytes (-1:
        all) of the file at `data`."""
        if isinstance(data, bytes) and len(data) <= self.inline_max:
            return await asyncio.to_thread(scan_message, data, self.limits)
        pool = self._worker_pool()
        try:
            if isinstance(data, bytes):
                return await asyncio.get_running_loop().run_in_executor(
                    pool, scan_message, data, self.limits)
            return await asyncio.get_running_loop().run_in_executor(
                pool, scan_file, data, self.limits, size)
        except BrokenProcessPool as e:
            # A worker that died (killed, out of memory) takes the pool with it: start anew.
            log.error("the DLP scan worker died: %s", e)
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise ScanFailed("the DLP scan worker died") from e

    def _worker_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the daemon's threads and event loop must not be copied.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
