"""S/MIME signing and encryption of a MIME entity: bytes in, bytes out.

`sign` makes a detached multipart/signed entity (RFC 1847, RFC 8551 3.5) whose SignedData
(RFC 5652 5) uses SHA-256 and carries the signer's certificate and chain. `encrypt` makes
an application/pkcs7-mime enveloped-data entity (RFC 8551 3.3): EnvelopedData (RFC 5652 6)
with AES-256-CBC and RSA PKCS#1 v1.5 key transport, the combination Outlook can open.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.transform.mime import CRLF, base64_body, canonical, join_entity, new_boundary

_SIGNED_PREAMBLE = b"This is an S/MIME signed message" + CRLF
_SIGNATURE_HEAD = (b"Content-Type: application/pkcs7-signature; name=smime.p7s" + CRLF
                   + b"Content-Transfer-Encoding: base64" + CRLF
                   + b"Content-Disposition: attachment; filename=smime.p7s" + CRLF
                   + b"Content-Description: S/MIME Cryptographic Signature" + CRLF)
_ENVELOPED_HEAD = (b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;"
                   b" name=smime.p7m" + CRLF
                   + b"Content-Transfer-Encoding: base64" + CRLF
                   + b"Content-Disposition: attachment; filename=smime.p7m" + CRLF
                   + b"Content-Description: S/MIME Encrypted Message" + CRLF)


def sign(entity: bytes, cert: x509.Certificate, key: pkcs7.PKCS7PrivateKeyTypes,
         chain: Sequence[x509.Certificate]) -> bytes:
    """A multipart/signed entity: `entity` and a detached SHA-256 signature by `key`."""
    content = canonical(entity)
    builder = (pkcs7.PKCS7SignatureBuilder()
               .set_data(content)
               .add_signer(cert, key, hashes.SHA256()))
    # Certificates must be added last: set_data and add_signer return builders that
    # silently drop certificates added before them.
    for extra in _unique([c for c in chain if c != cert]):
        builder = builder.add_certificate(extra)
    # Binary: we sign `content` exactly as it sits in the multipart, no conversion.
    signature = builder.sign(serialization.Encoding.DER,
                             [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])
    boundary = new_boundary(content)
    delimiter = b"--" + boundary.encode("ascii")
    head = ('Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
            f' micalg=sha-256; boundary="{boundary}"').encode("ascii") + CRLF
    body = (_SIGNED_PREAMBLE + CRLF + delimiter + CRLF + content + CRLF + delimiter + CRLF
            + join_entity(_SIGNATURE_HEAD, base64_body(signature))
            + CRLF + delimiter + b"--" + CRLF)
    return join_entity(head, body)


def encrypt(entity: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """An application/pkcs7-mime entity: `entity` encrypted to each recipient certificate."""
    unique = _unique(recipients)
    if not unique:
        raise ValueError("encrypt needs at least one recipient certificate")
    builder = (pkcs7.PKCS7EnvelopeBuilder()
               .set_data(canonical(entity))
               .set_content_encryption_algorithm(algorithms.AES256))
    for cert in unique:
        builder = builder.add_recipient(cert)
    # Binary: the entity is already canonical MIME; PKCS#1 v1.5 is the builder's only
    # RSA key transport.
    enveloped = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    return join_entity(_ENVELOPED_HEAD, base64_body(enveloped))


def _unique(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """`certs` in order without repeats, so no recipient or certificate appears twice."""
    seen: list[x509.Certificate] = []
    for cert in certs:
        if cert not in seen:
            seen.append(cert)
    return seen
