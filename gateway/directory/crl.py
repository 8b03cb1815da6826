"""Certificate revocation lists for recipient certificates: load, refresh, keep the last good.

`directory.crls` names files (globs, PEM or DER) and http(s) URLs (RFC 5280 §4.2.1.13:
DER over HTTP). Files are re-read when they change; URLs are fetched again well before
their nextUpdate (RFC 5280 §5.1.2.5) and at least hourly. A CRL replaces the one held only
when it parses, is signed by its issuer (when that CA is configured) and is not older; so
a failed or forged download never loses the last good list. Whether a held CRL is still
fresh is judged at validation time by pyhanko-certvalidator, which also verifies its
signature against the validated path (RFC 5280 §6.3).

At national scale (an OCES CRL lists hundreds of thousands of serials) a linear scan
per lookup costs hundreds of milliseconds, so each CRL is also indexed by serial when
it is loaded or refreshed (in the loading thread): its serials sorted, with their
revocation times beside them, searched by bisection. `IndexedCrls.status` answers from
that index for a complete CRL (no delta, no issuing distribution point) that is current
and signed by the certificate's issuer; anything else is left to pyhanko-certvalidator.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from asn1crypto import crl as asn1_crl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 64 * 1024 * 1024
MAX_INTERVAL = timedelta(hours=1)  # CAs publish new CRLs long before nextUpdate
MAX_RETRY = timedelta(minutes=15)


@dataclass(frozen=True)
class _Held:
    crl: x509.CertificateRevocationList  # for the store's own checks and the serial index
    data: asn1_crl.CertificateList  # for pyhanko, only ever read by the validator
    stamp: tuple[float, int] | None = None  # a file's mtime and size when read
    complete: bool = False  # a full CRL of its issuer: the index can answer alone
    serials: list[int] = field(default_factory=list, compare=False)  # sorted
    revoked_at: array[float] = field(default_factory=lambda: array("d"), compare=False)
    verified: dict[bytes, bool] = field(default_factory=dict, compare=False)  # key -> valid


@dataclass(frozen=True)
class Revocation:
    """What an indexed CRL says about one serial."""

    revoked: bool
    date: datetime | None = None


class IndexedCrls:
    """The CRLs held at one moment, answering by serial (RFC 5280 §6.3.3, complete CRLs)."""

    def __init__(self, held: Sequence[_Held]) -> None:
        self._held = list(held)

    def status(self, serial: int, issuer: x509.Name, issuer_key: object,
               moment: datetime) -> Revocation | None:
        """Revoked or not by a current, complete CRL signed by `issuer_key`; None: unknown here."""
        answer = None
        for held in self._held:
            crl = held.crl
            if not held.complete or crl.issuer != issuer:
                continue
            if crl.next_update_utc is None or not crl.last_update_utc <= moment <= \
                    crl.next_update_utc:
                continue  # stale or not yet valid: pyhanko explains why
            if not _verified(held, issuer_key):
                continue
            i = bisect_left(held.serials, serial)
            if i < len(held.serials) and held.serials[i] == serial:
                return Revocation(True, datetime.fromtimestamp(held.revoked_at[i], UTC))
            answer = Revocation(False)
        return answer


def _verified(held: _Held, key: object) -> bool:
    """Whether `key` signed the CRL, computed once per CRL and key (it hashes the whole list)."""
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    if der not in held.verified:
        try:
            held.verified[der] = held.crl.is_signature_valid(key)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            held.verified[der] = False
    return held.verified[der]


@dataclass
class _Url:
    url: str
    held: _Held | None = None
    due: datetime | None = None  # None: fetch at the next refresh
    failures: int = 0


class CrlStore:
    """The CRLs named in the configuration, kept current by `run()`."""

    def __init__(self, locations: Sequence[str], issuers: Sequence[x509.Certificate] = (), *,
                 timeout: float = 30.0, poll: float = 60.0) -> None:
        self._patterns = [loc for loc in locations if not re.match(r"https?://", loc)]
        self._urls = [_Url(loc) for loc in locations if re.match(r"https?://", loc)]
        self._files: dict[str, _Held] = {}
        self._issuers = list(issuers)
        self._timeout = timeout
        self._poll = poll
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self._loaded = False

    def current(self) -> list[asn1_crl.CertificateList]:
        """Every CRL held, stale ones included: the validator judges freshness."""
        return [h.data for h in self._all()]

    def indexed(self) -> IndexedCrls:
        """The CRLs held now, for lookups by serial (taken on the loop, used in a thread)."""
        return IndexedCrls(self._all())

    def _all(self) -> list[_Held]:
        return list(self._files.values()) + [u.held for u in self._urls if u.held]

    async def ensure_loaded(self) -> None:
        """Load every CRL once, so that no certificate is judged before its CRL is known."""
        if self._loaded:
            return
        async with self._lock:
            if not self._loaded:
                await self._refresh(force=True, now=datetime.now(UTC))

    async def refresh(self, *, force: bool = False, now: datetime | None = None) -> None:
        """Re-read changed files and fetch URLs that are due (all of them with `force`)."""
        async with self._lock:
            await self._refresh(force=force, now=now or datetime.now(UTC))

    async def run(self) -> None:
        """Refresh forever, every `poll` seconds (the background task)."""
        while True:
            try:
                await self.refresh()
            except Exception:  # the task must outlive any one bad round
                log.exception("CRL refresh failed")
            await asyncio.sleep(self._poll)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session:
            await self._session.close()
            self._session = None

    async def _refresh(self, *, force: bool, now: datetime) -> None:
        await asyncio.gather(
            self._read_files(force),
            *(self._fetch(u, now) for u in self._urls if force or u.due is None or u.due <= now),
        )
        self._loaded = True

    async def _read_files(self, force: bool) -> None:
        changed = await asyncio.to_thread(self._scan_files, force)
        for name, result in changed.items():
            if isinstance(result, Exception):
                log.warning("CRL %s not loaded, keeping the last good one: %s", name, result)
            else:
                self._files[name] = result

    def _scan_files(self, force: bool) -> dict[str, _Held | Exception]:
        """Read every file that is new or changed (all with `force`); runs in a thread."""
        changed: dict[str, _Held | Exception] = {}
        for pattern in self._patterns:
            names = sorted(glob.glob(pattern)) or [pattern]  # nothing: say so below
            for name in names:
                try:
                    st = os.stat(name)
                    stamp = (st.st_mtime, st.st_size)
                    held = self._files.get(name)
                    if held is None or held.stamp != stamp or force:
                        changed[name] = self._accept(Path(name).read_bytes(), held, stamp)
                except (OSError, ValueError) as e:
                    changed[name] = e
        return changed

    async def _fetch(self, source: _Url, now: datetime) -> None:
        try:
            data = await self._download(source.url)
            source.held = await asyncio.to_thread(self._accept, data, source.held)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            source.failures += 1
            retry = min(timedelta(seconds=self._poll) * 2 ** (source.failures - 1), MAX_RETRY)
            source.due = now + retry
            log.warning("CRL %s not loaded, keeping the last good one, retry in %ds: %s",
                        source.url, retry.total_seconds(), str(e) or type(e).__name__)
            return
        source.failures = 0
        source.due = self._next_fetch(source.held.crl, now)
        if source.held.crl.next_update_utc and source.held.crl.next_update_utc < now:
            log.warning("CRL %s is past its nextUpdate %s", source.url,
                        source.held.crl.next_update_utc.strftime("%Y-%m-%d %H:%M:%SZ"))

    def _next_fetch(self, crl: x509.CertificateRevocationList, now: datetime) -> datetime:
        """Three quarters into the CRL's validity, at most an hour and at least a poll away."""
        due = now + MAX_INTERVAL
        if crl.next_update_utc:
            window = crl.next_update_utc - crl.last_update_utc
            due = min(due, crl.last_update_utc + window * 3 / 4)
        return max(due, now + timedelta(seconds=self._poll))

    async def _download(self, url: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with self._session.get(url, timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"HTTP status {response.status}")
            data = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                data += chunk
                if len(data) > MAX_CRL_BYTES:
                    raise ValueError(f"larger than {MAX_CRL_BYTES} bytes")
            return bytes(data)

    def _accept(self, data: bytes, held: _Held | None,
                stamp: tuple[float, int] | None = None) -> _Held:
        """The new CRL to hold, or ValueError why the one held stays."""
        if b"-----BEGIN" in data:
            crl = x509.load_pem_x509_crl(data)
            data = crl.public_bytes(Encoding.DER)
        else:
            crl = x509.load_der_x509_crl(data)
        issuers = [c for c in self._issuers if c.subject == crl.issuer]
        if issuers and not any(_signed_by(crl, c) for c in issuers):
            raise ValueError(f"signature does not verify with {crl.issuer.rfc4514_string()}'s key")
        if held and crl.last_update_utc < held.crl.last_update_utc:
            raise ValueError("older than the CRL held")
        entries = sorted((r.serial_number, r.revocation_date_utc.timestamp()) for r in crl)
        return _Held(crl, asn1_crl.CertificateList.load(data), stamp, _complete(crl),
                     serials=[serial for serial, _ in entries],
                     revoked_at=array("d", (when for _, when in entries)))


def _complete(crl: x509.CertificateRevocationList) -> bool:
    """A full CRL for every certificate of its issuer (no delta, no partitioned scope)."""
    for ext in crl.extensions:
        if isinstance(ext.value, x509.DeltaCRLIndicator | x509.IssuingDistributionPoint):
            return False
        if ext.critical and not isinstance(ext.value, x509.CRLNumber | x509.AuthorityKeyIdentifier):
            return False
    return True


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())
    except (TypeError, ValueError):
        return False
