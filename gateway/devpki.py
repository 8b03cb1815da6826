"""A development PKI for `send-sikkert certs dev-init`: never for production mail.

Writes a "send-sikkert dev CA" (out_dir/dev/ca.pem, ca.key) and its trust-anchor copy
(out_dir/trust/dev-ca.pem); for every configured department a key and an S/MIME
certificate with the CA appended, at the department's `cert` and `key` paths; and demo
recipient certificates for the files directory (out_dir/directory/<local>_at_<domain>.pem)
with their keys in out_dir/dev/recipients/<address>.key, so that a developer can open
what the gateway encrypts with `openssl cms -decrypt`. With `[http.tls]` it also writes
the HTTP listener's certificate (serverAuth, SAN localhost, 127.0.0.1, ::1 and the host
of `addin.public_url`), so the demo serves the Outlook add-in over HTTPS. Certificates
follow RFC 5280 and RFC 8550 (SAN rfc822Name, emailProtection, keyEncipherment for RSA
key transport).
Re-running keeps whatever is present and still good, the CA above all.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import Config, ConfigError

DEMO_RECIPIENTS = ("olelsen@dhl.dk", "borger@example.dk")
CA_NAME = "send-sikkert dev CA"
CA_LIFETIME = timedelta(days=3650)
LEAF_LIFETIME = timedelta(days=730)
RENEW_BEFORE = timedelta(days=30)  # re-issue what would expire this soon
BACKDATE = timedelta(hours=1)  # tolerate clock skew between machines


@dataclass(frozen=True)
class _Identity:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


def dev_init(config: Config, out_dir: Path, now: datetime | None = None) -> list[Path]:
    """Write the development PKI; returns the files written (none when all was current).

    ConfigError when a department's key is not a separate PEM file (PKCS #12, combined).
    """
    for i, dep in enumerate(config.departments):
        if dep.cert == dep.key or dep.key.suffix.lower() in (".p12", ".pfx"):
            raise ConfigError(config.path, f"departments[{i}].key",
                              "dev-init writes a PEM key and a PEM certificate, in two files")
    now = now or datetime.now(UTC)
    written: list[Path] = []
    org = config.organisation.name
    ca = _ensure_ca(out_dir / "dev" / "ca.pem", out_dir / "dev" / "ca.key", org, now, written)
    _write(out_dir / "trust" / "dev-ca.pem", _pem(ca.cert), written)
    for dep in config.departments:
        _ensure_leaf(dep.cert, dep.key, [x509.RFC822Name(dep.mailbox)], dep.name, org, ca, now,
                     written, with_chain=True)
    for address in DEMO_RECIPIENTS:
        local, _, domain = address.partition("@")
        _ensure_leaf(out_dir / "directory" / f"{local}_at_{domain}.pem",
                     out_dir / "dev" / "recipients" / f"{address}.key",
                     [x509.RFC822Name(address)], f"Demo recipient {address}", None, ca, now,
                     written, with_chain=False)
    if config.http.tls is not None:
        names = _server_names(config.addin.public_url)
        _ensure_leaf(config.http.tls.cert, config.http.tls.key, names,
                     "send-sikkert dev HTTPS", org, ca, now, written, with_chain=True)
    return written


def _ensure_ca(cert_path: Path, key_path: Path, org: str, now: datetime,
               written: list[Path]) -> _Identity:
    """The CA on disk when it is whole and current, else a new one."""
    found = _read(cert_path, key_path)
    if found and found.cert.not_valid_after_utc - now > RENEW_BEFORE:
        return found
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), written, private=True)
    _write(cert_path, _pem(cert), written)
    return _Identity(cert, key)


def _server_names(public_url: str) -> list[x509.GeneralName]:
    """Loopback by name and address, and the add-in's public host if it has one."""
    hosts = ["localhost", "127.0.0.1", "::1"]
    public = urlsplit(public_url).hostname if public_url else None
    if public and public not in hosts:
        hosts.append(public)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _ensure_leaf(cert_path: Path, key_path: Path, names: list[x509.GeneralName],
                 common_name: str, org: str | None, ca: _Identity, now: datetime,
                 written: list[Path], with_chain: bool) -> None:
    """Keep a current certificate for these names from this CA, or issue a new one.

    An rfc822Name makes an S/MIME certificate; DNS names and addresses a TLS server one.
    """
    found = _read(cert_path, key_path)
    if found is None or not _current(found.cert, names, ca.cert, now):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write(key_path, _key_pem(key), written, private=True)
        found = _Identity(_issue(key, names, common_name, org, ca, now), key)
    _write(cert_path, _pem(found.cert) + (_pem(ca.cert) if with_chain else b""), written)


def _current(cert: x509.Certificate, names: list[x509.GeneralName], ca: x509.Certificate,
             now: datetime) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return (all(name in san for name in names)
            and cert.not_valid_before_utc <= now
            and cert.not_valid_after_utc - now > RENEW_BEFORE)


def _issue(key: rsa.RSAPrivateKey, names: list[x509.GeneralName], common_name: str,
           org: str | None, ca: _Identity, now: datetime) -> x509.Certificate:
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    smime = any(isinstance(n, x509.RFC822Name) for n in names)
    usage = ExtendedKeyUsageOID.EMAIL_PROTECTION if smime else ExtendedKeyUsageOID.SERVER_AUTH
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_LIFETIME, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                     False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def _read(cert_path: Path, key_path: Path) -> _Identity | None:
    """The certificate (first in the file) and its RSA key, if both are there and match."""
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, rsa.RSAPrivateKey):
        return None
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        return None
    return _Identity(cert, key)


def _write(path: Path, data: bytes, written: list[Path], private: bool = False) -> None:
    """Replace the file atomically when its content differs; keys readable by the owner only."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover would keep its permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    written.append(path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
