"""The departments that sign secure mail: their keys, certificates and who may use them.

A department's certificate and key are loaded at start and on SIGHUP; a key that does
not match its certificate, or a certificate that has expired, stops the start with a
ConfigError (CONTRACT `[[departments]]`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.config import ConfigError, DepartmentConfig
from gateway.observe import metrics
from gateway.transform.smime import Signer

log = logging.getLogger(__name__)

EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class Department:
    """One department: its configuration and the signing identity loaded from disk."""

    config: DepartmentConfig
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # intermediates (and root) that follow the certificate
    key: rsa.RSAPrivateKey

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def mailbox(self) -> str:
        return self.config.mailbox

    @property
    def stamp(self) -> str:
        return self.config.stamp

    @cached_property
    def signer(self) -> Signer:
        """Signs the department's mail; made once per process and loaded identity."""
        return Signer(self.certificate, self.key, self.chain)

    def allows(self, sender: str) -> bool:
        """Whether the envelope sender may send through this department (`senders`)."""
        return _matches(sender, self.config.senders)

    def is_default_for(self, sender: str) -> bool:
        return _matches(sender, self.config.default_for)


def _matches(address: str, patterns: tuple[str, ...]) -> bool:
    address = address.lower()
    return any(fnmatch.fnmatchcase(address, p) for p in patterns)


def load_departments(configs: tuple[DepartmentConfig, ...], config_file: str,
                     now: datetime | None = None) -> tuple[Department, ...]:
    """Load every department's identity, refusing bad keys and expired certificates."""
    now = now or datetime.now(UTC)
    departments = []
    for i, dep in enumerate(configs):
        departments.append(_load_one(dep, f"departments[{i}]", config_file, now))
    return tuple(departments)


def _load_one(dep: DepartmentConfig, key_name: str, config_file: str,
              now: datetime) -> Department:
    def fail(field: str, message: str) -> ConfigError:
        return ConfigError(config_file, f"{key_name}.{field}", message)

    try:
        key_bytes = dep.key.read_bytes()
        cert_bytes = dep.cert.read_bytes() if dep.cert != dep.key else key_bytes
    except OSError as e:
        which = "key" if e.filename == str(dep.key) else "cert"
        hint = (" (for the demo, run `send-sikkert certs dev-init` first)"
                if isinstance(e, FileNotFoundError) else "")
        raise fail(which, f"cannot read {e.filename}: {e.strerror}{hint}") from None

    passphrase = None
    if dep.key_passphrase_env:
        value = os.environ.get(dep.key_passphrase_env)
        if value is None:
            raise fail("key_passphrase_env",
                       f"environment variable {dep.key_passphrase_env} is not set")
        passphrase = value.encode()

    if dep.key.suffix.lower() in (".p12", ".pfx"):
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(key_bytes, passphrase)
        except ValueError as e:
            raise fail("key", f"cannot open PKCS#12 file {dep.key}: {e}") from None
        if cert is None or key is None:
            raise fail("key", f"PKCS#12 file {dep.key} holds no key and certificate")
        chain = list(extra)
        if dep.cert != dep.key:
            chain = _load_pem_certs(cert_bytes, fail)[1:] or chain
    else:
        try:
            key = serialization.load_pem_private_key(key_bytes, passphrase)
        except (ValueError, TypeError) as e:
            raise fail("key", f"cannot read private key {dep.key}: {e}") from None
        certs = _load_pem_certs(cert_bytes, fail)
        cert, chain = certs[0], certs[1:]

    if not isinstance(key, rsa.RSAPrivateKey):
        raise fail("key", f"{dep.key} is not an RSA key (S/MIME key transport needs RSA)")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise fail("key", f"{dep.key} does not match the certificate in {dep.cert}")
    if cert.not_valid_after_utc <= now:
        raise fail("cert", f"certificate {dep.cert} expired {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        raise fail("cert", f"certificate {dep.cert} is not valid before "
                           f"{cert.not_valid_before_utc:%Y-%m-%d}")
    if cert.not_valid_after_utc - now < EXPIRY_WARNING:
        log.warning("department %s: certificate %s expires %s; renew it now", dep.id, dep.cert,
                    cert.not_valid_after_utc.strftime("%Y-%m-%d"))
    metrics.department_cert_expiry.labels(department=dep.id).set(
        cert.not_valid_after_utc.timestamp())
    return Department(dep, cert, tuple(chain), key)


def _load_pem_certs(data: bytes, fail) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise fail("cert", f"no PEM certificate found: {e}") from None
    return certs
