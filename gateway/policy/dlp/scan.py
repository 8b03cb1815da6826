"""Scan one message for CPR numbers without stalling the event loop: extraction, then
the detector, over the message in pieces.

Where it runs (`Scanner`): small mail without documents on the loop (cheaper than a
thread hop), other mail up to 256 KiB in a thread, larger mail in pieces in a thread as
long as it is text, and mail with documents (PDF, Office, ZIP) or much HTML in a worker
process, so a 40 MB PDF never holds the daemon's interpreter lock while other SMTP
sessions, deliveries and the HTTP API wait. A message left in its spool file is read
there a piece at a time, never whole. The scan holds no state: every process of the
daemon may have its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import logging
import multiprocessing
import time
from collections.abc import Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from gateway.config import DlpConfig
from gateway.policy.dlp.cpr import CprMatch, CprStream, Reason
from gateway.policy.dlp.extract import Extraction, Gap, Heavy, Limits, Where, read_message, slices
from gateway.spool.body import Spooled

log = logging.getLogger(__name__)

LOOP_MAX = 16 * 1024  # bytes: up to this, a message without documents is scanned on the loop
INLINE_MAX = 256 * 1024  # bytes: up to this size a message is scanned in a thread
# Bytes of a spooled message read at a time: in a thread, each piece's regex search holds
# the interpreter lock in one go (about 1 ms for this much text).
SPOOL_PIECE = 256 * 1024


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


def scan_message(data: bytes, limits: Limits | None = None,
                 light: bool = False) -> ScanResult:
    """Every CPR number in the message, once per number and place. Light: raise Heavy
    rather than read a document or much HTML."""
    return scan_pieces(slices(data), limits, light)


def scan_spooled(message: Spooled, limits: Limits | None = None,
                 light: bool = False) -> ScanResult:
    """`scan_message` of a message left in its spool file, read a piece at a time."""
    return scan_pieces(message.read_pieces(SPOOL_PIECE), limits, light)


def scan_pieces(pieces: Iterable[bytes], limits: Limits | None = None,
                light: bool = False) -> ScanResult:
    """`scan_message` of a message that arrives in pieces (of any size: the findings are
    the same however it is split)."""
    started = time.perf_counter()
    findings = _Findings()
    extraction = Extraction(limits or Limits(), findings, light)
    read_message(pieces, extraction)
    return ScanResult(tuple(findings.found), tuple(extraction.gaps),
                      time.perf_counter() - started)


class _Findings:
    """A Sink that runs the detector over each place's text as it streams by."""

    def __init__(self) -> None:
        self.found: list[Finding] = []
        self._seen: set[tuple[str, str, str]] = set()

    def open(self, where: Where, name: str) -> _PlaceScan:
        return _PlaceScan(self, where, name, CprStream(), {})

    def add(self, where: Where, name: str, matches: Iterable[CprMatch]) -> None:
        for m in matches:
            key = (where, name, m.digits)
            if key not in self._seen:
                self._seen.add(key)
                self.found.append(Finding(where, name, m.masked, m.reason))


@dataclass
class _PlaceScan:
    """The detector over one place's text; its numbers count once the text is kept."""

    findings: _Findings
    where: Where
    name: str
    stream: CprStream
    matches: dict[str, CprMatch]  # by digits: the first of each number

    def write(self, text: str) -> None:
        for m in self.stream.feed(text):
            self.matches.setdefault(m.digits, m)

    def close(self, keep: bool = True) -> None:
        if keep:
            for m in self.stream.close():
                self.matches.setdefault(m.digits, m)
            self.findings.add(self.where, self.name, self.matches.values())

    def fork(self) -> _PlaceScan:
        return _PlaceScan(self.findings, self.where, self.name, copy.copy(self.stream),
                          dict(self.matches))


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
    """Runs the scan where it costs least without stalling the event loop.

    Small mail without documents is scanned on the loop itself: a thread hop costs more
    CPU than the scan. Mail up to `inline_max` is otherwise scanned in a thread. Larger
    mail is read in pieces in a thread as long as it is text; one holding a document
    (PDF, Office, ZIP) or much HTML is scanned in a worker process instead, started for
    the first such message, so pure-Python parsing never holds the daemon's interpreter
    lock for long.
    """

    def __init__(self, limits: Limits | None = None, workers: int = 1,
                 inline_max: int = INLINE_MAX, loop_max: int = LOOP_MAX) -> None:
        self.limits = limits or Limits()
        self.workers = workers
        self.inline_max = inline_max
        self.loop_max = loop_max
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    async def scan(self, data: bytes | Spooled) -> ScanResult:
        """The scan of a message in memory, or of one left in its spool file."""
        if isinstance(data, bytes) and len(data) <= self.loop_max:
            with contextlib.suppress(Heavy):
                return scan_message(data, self.limits, light=True)
        scan = scan_message if isinstance(data, bytes) else scan_spooled
        if isinstance(data, bytes) and len(data) <= self.inline_max:
            return await asyncio.to_thread(scan, data, self.limits)
        with contextlib.suppress(Heavy):
            return await asyncio.to_thread(scan, data, self.limits, True)
        pool = self._worker_pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, scan, data, self.limits)
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
