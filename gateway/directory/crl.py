"""Certificate revocation lists for recipient certificates: load, refresh, keep the last good.

`directory.crls` names files (globs, PEM or DER) and http(s) URLs (RFC 5280 §4.2.1.13:
DER over HTTP). Files are re-read when they change; URLs are fetched again well before
their nextUpdate (RFC 5280 §5.1.2.5) and at least hourly. A CRL replaces the one held only
when it parses, is signed by its issuer (when that CA is configured) and is not older; so
a failed or forged download never loses the last good list. Whether a held CRL is still
fresh is judged at validation time by pyhanko-certvalidator, which also verifies its
signature against the validated path (RFC 5280 §6.3).
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from asn1crypto import crl as asn1_crl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 64 * 1024 * 1024
MAX_INTERVAL = timedelta(hours=1)  # CAs publish new CRLs long before nextUpdate
MAX_RETRY = timedelta(minutes=15)


@dataclass(frozen=True)
class _Held:
    crl: x509.CertificateRevocationList  # for the store's own checks
    data: asn1_crl.CertificateList  # for pyhanko, only ever read by the validator
    stamp: tuple[float, int] | None = None  # a file's mtime and size when read


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
        held = list(self._files.values()) + [u.held for u in self._urls if u.held]
        return [h.data for h in held]

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
        return _Held(crl, asn1_crl.CertificateList.load(data), stamp)


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())
    except (TypeError, ValueError):
        return False
