"""The certificate directory as the classifier sees it: address in, Decision out.

Looks the address up in the configured source (files or LDAP) and in the store of learnt
certificates beside it (gateway.directory.learnt), lets RecipientValidator choose among
them all (RFC 5280, RFC 8550) and keeps the CRLs current in the background.
A source that cannot answer makes the recipient `unknown`, never `unsafe` (fail closed:
the message waits and is retried). open_directory() builds it all from `[directory]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import time
from pathlib import Path

from cryptography import x509

from gateway.config import ConfigError, DirectoryConfig
from gateway.directory import CertificateSource, DirectoryUnavailable
from gateway.directory.crl import CrlStore
from gateway.directory.files import FilesSource, read_certificates
from gateway.directory.validate import RecipientValidator
from gateway.model import Decision, RecipientClass
from gateway.observe import metrics

log = logging.getLogger(__name__)


class CertificateDirectory:
    """Classifies addresses by the certificates their directory entry holds."""

    def __init__(self, source: CertificateSource, validator: RecipientValidator, backend: str,
                 *, timeout: float | None = None,
                 learnt: CertificateSource | None = None) -> None:
        self.source = source
        self.learnt = learnt
        self.validator = validator
        self.backend = backend
        self._timeout = timeout
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the CRLs, then keep them current in a background task."""
        crls = self.validator.crls
        if crls is not None and self._refresher is None:
            await crls.ensure_loaded()
            self._refresher = asyncio.create_task(crls.run(), name="crl-refresh")

    async def classify(self, address: str) -> Decision:
        """SMIME with the chosen certificate, UNSAFE with why, UNKNOWN when the source fails."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                published, learnt = await asyncio.gather(self.source.lookup(address),
                                                         self._learnt(address))
        except TimeoutError:
            return self._unavailable(address, f"no answer within {self._timeout:g} s")
        except DirectoryUnavailable as e:
            return self._unavailable(address, str(e) or type(e).__name__)
        finally:
            metrics.directory_lookup_seconds.labels(backend=self.backend).observe(
                time.perf_counter() - started)
        choice = await self.validator.choose(address, published + learnt)
        reason = choice.reason
        if choice.der is not None and choice.der in learnt and choice.der not in published:
            reason += " (learnt)"
        return Decision(address, choice.cls, reason, choice.certificate, choice.der)

    async def _learnt(self, address: str) -> list[bytes]:
        return await self.learnt.lookup(address) if self.learnt is not None else []

    def _unavailable(self, address: str, why: str) -> Decision:
        metrics.directory_errors.labels(backend=self.backend).inc()
        log.warning("certificate directory lookup for %s failed: %s", address, why)
        return Decision(address, RecipientClass.UNKNOWN,
                        f"certificate directory unavailable: {why}")

    async def ping(self) -> None:
        """Raise DirectoryUnavailable when a source cannot be reached (for /readyz)."""
        await self.source.ping()
        if self.learnt is not None:
            await self.learnt.ping()

    async def close(self) -> None:
        """Stop the CRL task, close the source and the validator's worker thread."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self.validator.crls is not None:
            await self.validator.crls.close()
        await self.source.close()
        if self.learnt is not None:
            await self.learnt.close()
        self.validator.close()


def open_directory(config: DirectoryConfig, config_file: Path | str = "configuration",
                   learnt: CertificateSource | None = None) -> CertificateDirectory | None:
    """The directory `[directory]` describes, None without a backend; ConfigError if wrong.

    `learnt` is the store of learnt certificates, consulted beside the backend.
    """
    if config.backend is None:
        return None
    validator = open_validator(config, config_file)
    source: CertificateSource
    if config.backend == "ldap":
        from gateway.directory.ldap import LdapSource  # bonsai only where LDAP is used

        source = LdapSource(config, config_file=config_file)
    else:
        if config.path is None or not config.path.is_dir():
            raise ConfigError(config_file, "directory.path", f"{config.path} is not a folder")
        source = FilesSource(config.path)
    return CertificateDirectory(source, validator, config.backend, timeout=config.timeout,
                                learnt=learnt)


def open_validator(config: DirectoryConfig,
                   config_file: Path | str = "configuration") -> RecipientValidator:
    """The validator for `[directory]`'s trust anchors, intermediates and CRLs."""
    anchors = _load(config.trust_anchors, config_file, "directory.trust_anchors", required=True)
    intermediates = _load(config.intermediates, config_file, "directory.intermediates",
                          required=False)
    crls = None
    if config.crls:
        crls = CrlStore(config.crls, anchors + intermediates)
    return RecipientValidator(anchors, intermediates, crls, config.revocation)


def _load(patterns: tuple[str, ...], config_file: Path | str, key: str,
          required: bool) -> list[x509.Certificate]:
    """The certificates in the files the globs match; a pattern matching nothing is an
    error for trust anchors, and for intermediates when it names one file literally."""
    certs: list[x509.Certificate] = []
    for pattern in patterns:
        paths = sorted(glob.glob(pattern))
        if not paths and (required or not any(c in pattern for c in "*?[")):
            raise ConfigError(config_file, key, f"{pattern} matches no file")
        for path in paths:
            try:
                certs += read_certificates(Path(path))
            except OSError as e:
                raise ConfigError(config_file, key, f"cannot read {path}: {e.strerror}") from None
            except ValueError:
                raise ConfigError(config_file, key, f"{path} holds no certificate") from None
    if required and not certs:
        raise ConfigError(config_file, key, "needs at least one trust anchor")
    return certs
