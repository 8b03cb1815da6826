"""Test PKI: CAs, leaf certificates with every flaw the validation must catch, and CRLs.

Made at test time with `cryptography`; nothing here is read from disk.
"""

from __future__ import annotations

import ipaddress
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.now(UTC)
_KEY_CACHE: list[rsa.RSAPrivateKey] = []


def rsa_key(fresh: bool = False) -> rsa.RSAPrivateKey:
    """An RSA-2048 key; keys are reused across certificates unless `fresh` (speed)."""
    if fresh or len(_KEY_CACHE) < 4:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _KEY_CACHE.append(key)
        return key
    _KEY_CACHE.append(_KEY_CACHE.pop(0))
    return _KEY_CACHE[-1]


@dataclass
class Issued:
    """A certificate with its key, ready to write as PEM."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def server_context(self, *, with_chain: bool = True,
                       maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A TLS server context presenting this certificate (and its chain) with its key."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as folder:
            cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
            self.write(cert, key, with_chain=with_chain)
            context.load_cert_chain(cert, key)
        if maximum is not None:
            context.maximum_version = maximum
        return context

    def write(self, cert_path: Path, key_path: Path | None = None, with_chain: bool = True) -> None:
        data = self.pem + (b"".join(c.public_bytes(serialization.Encoding.PEM)
                                    for c in self.chain) if with_chain else b"")
        cert_path.write_bytes(data)
        if key_path:
            key_path.write_bytes(self.key_pem)


class CA:
    """A certificate authority that issues test certificates and CRLs."""

    def __init__(self, name: str = "Test Root CA", parent: CA | None = None) -> None:
        self.key = rsa_key(fresh=True)
        self.parent = parent
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name = parent.cert.subject if parent else subject
        signer = parent.key if parent else self.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=365))
            .not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                         False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
        )
        if parent:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()),
                critical=False)
        self.cert = builder.sign(signer, hashes.SHA256())
        self.revoked: list[tuple[int, datetime]] = []

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def chain(self) -> list[x509.Certificate]:
        """This CA and its parents up to (excluding) the root, for a leaf's chain."""
        result, ca = [], self
        while ca.parent is not None:
            result.append(ca.cert)
            ca = ca.parent
        return result

    def issue(
        self,
        email: str | None = None,
        *,
        common_name: str | None = None,
        emails: list[str] | None = None,
        subject_email: str | None = None,
        dns_names: list[str] | None = None,
        ips: list[str] | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key_encipherment: bool = True,
        digital_signature: bool = True,
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
        ec_key: bool = False,
        server: bool = False,
    ) -> Issued:
        """A leaf certificate; every argument is a way to make it valid or wrong."""
        if key is None:
            key = ec.generate_private_key(ec.SECP256R1()) if ec_key else rsa_key()
        names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name or email or "test")]
        if subject_email:
            names.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
        addresses = emails or ([email] if email else [])
        alt: list[x509.GeneralName] = [x509.RFC822Name(e) for e in addresses]
        alt += [x509.DNSName(d) for d in dns_names or []]
        alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(names))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - timedelta(days=30))
            .not_valid_after(not_after or NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature, False, key_encipherment, False, False, False,
                              False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH] if server
                else [ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert, key, self.chain)

    def revoke(self, issued: Issued, when: datetime | None = None) -> None:
        self.revoked.append((issued.cert.serial_number, when or NOW - timedelta(hours=1)))

    def crl(self, next_update: datetime | None = None,
            last_update: datetime | None = None) -> bytes:
        """A DER CRL listing everything revoked so far."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(last_update or NOW - timedelta(hours=1))
            .next_update(next_update or NOW + timedelta(days=7))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .add_extension(x509.CRLNumber(len(self.revoked) + 1), critical=False)
        )
        for serial, when in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(when).build())
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
