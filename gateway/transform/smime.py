"""S/MIME signing and encryption of a MIME entity: bytes in, bytes out.

`sign` makes a detached multipart/signed entity (RFC 1847, RFC 8551 3.5) whose SignedData
(RFC 5652 5) uses SHA-256 and carries the signer's certificate and chain. Its signed
attributes tell the partner's client how to answer encrypted (RFC 8551 2.5):
SMIMECapabilities with AES-256-CBC first, and SMIMEEncryptionKeyPreference naming the
signer's certificate as the one to encrypt to. cryptography's PKCS7SignatureBuilder
cannot add the latter, so SignedData is built here with asn1crypto and signed with
cryptography's RSA. `encrypt` makes
an application/pkcs7-mime enveloped-data entity (RFC 8551 3.3): EnvelopedData (RFC 5652 6)
with AES-256-CBC and RSA PKCS#1 v1.5 key transport, the combination Outlook can open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.transform.mime import (
    CRLF,
    base64_body,
    canonical,
    join_entity,
    new_boundary,
    parse_headers,
    split_entity,
)

# In order of preference: what a partner should encrypt its replies with (RFC 8551 2.7.1).
SMIME_CAPABILITIES = ("aes256_cbc", "aes192_cbc", "aes128_cbc")
_PKCS7_MIME = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
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


def sign(entity: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey,
         chain: Sequence[x509.Certificate]) -> bytes:
    """A multipart/signed entity: `entity` and a detached SHA-256 signature by `key`.

    For one signature; a signer used again and again (a department) keeps a `Signer`.
    """
    return Signer(cert, key, chain).sign(entity)


class Signer:
    """Signs for one certificate and key: the SignedData is built once, then filled in.

    Everything in a SignedData but the signing time, the message digest and the
    signature is the same for every message, and asn1crypto's building and encoding of
    it (certificates, attributes) costs several times the RSA signature. So it is built
    and DER-encoded once, with placeholder values, by asn1crypto; each message then puts
    its values into the fixed-length places they take (UTCTime, SHA-256, an RSA
    signature as long as the modulus), which keeps the DER and the order of the
    attributes' SET OF (X.690 11.6) exactly as asn1crypto would encode them.
    """

    def __init__(self, cert: x509.Certificate, key: rsa.RSAPrivateKey,
                 chain: Sequence[x509.Certificate]) -> None:
        self.key = key
        self._signature_size = (key.key_size + 7) // 8
        signer = _asn1_cert(cert)
        signer_id = cms.IssuerAndSerialNumber({"issuer": signer.issuer,
                                               "serial_number": signer.serial_number})
        attributes = _signed_attributes(_DIGEST_MARK, signer_id, _TIME_MARK)
        self._attributes = attributes.dump()  # as the SET OF the signature covers (5.4)
        self._time_at = _only(self._attributes, _TIME_MARK_UTC)
        self._digest_at = _only(self._attributes, _DIGEST_MARK)
        certificates = [signer] + [_asn1_cert(c)
                                   for c in _unique([c for c in chain if c != cert])]
        template = _content_info(signer_id, attributes, certificates,
                                 bytes(self._signature_size))
        # In SignerInfo the attributes are [0] IMPLICIT, the signature comes last.
        implicit = b"\xa0" + self._attributes[1:]
        at = _only(template, implicit)
        self._head = template[:at]
        self._tail = template[at + len(implicit):len(template) - self._signature_size]

    def sign(self, entity: bytes, now: datetime | None = None) -> bytes:
        """A multipart/signed entity: `entity` and a detached SHA-256 signature."""
        content = canonical(entity)
        signature = self.signed_data(content, now)
        boundary = new_boundary(content)
        delimiter = b"--" + boundary.encode("ascii")
        head = ('Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
                f' micalg=sha-256; boundary="{boundary}"').encode("ascii") + CRLF
        body = (_SIGNED_PREAMBLE + CRLF + delimiter + CRLF + content + CRLF + delimiter
                + CRLF + join_entity(_SIGNATURE_HEAD, base64_body(signature))
                + CRLF + delimiter + b"--" + CRLF)
        return join_entity(head, body)

    def signed_data(self, content: bytes, now: datetime | None = None) -> bytes:
        """A detached SignedData ContentInfo (DER) over exactly `content` (RFC 5652 5)."""
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        if not 1950 <= moment.year <= 2049:  # RFC 5652 11.3: GeneralizedTime, not ours
            raise ValueError(f"signing time {moment:%Y} is outside UTCTime's years")
        attributes = bytearray(self._attributes)
        attributes[self._time_at:self._time_at + len(_TIME_MARK_UTC)] = \
            moment.strftime("%y%m%d%H%M%SZ").encode("ascii")
        attributes[self._digest_at:self._digest_at + 32] = hashlib.sha256(content).digest()
        signature = self.key.sign(bytes(attributes), padding.PKCS1v15(), hashes.SHA256())
        if len(signature) != self._signature_size:  # cryptography pads it: never happens
            raise ValueError("RSA signature of unexpected length")
        return b"".join((self._head, b"\xa0", memoryview(attributes)[1:], self._tail,
                         signature))


# Placeholders for the template: of the length the real values have, and not found
# anywhere else in the attributes (checked by _only).
_DIGEST_MARK = bytes(range(0xA0, 0xC0))  # SHA-256: 32 bytes
_TIME_MARK = datetime(2049, 12, 31, 23, 59, 58, tzinfo=UTC)  # UTCTime: always 13 characters
_TIME_MARK_UTC = b"491231235958Z"


def _only(data: bytes, part: bytes) -> int:
    """Where `part` is in `data`; ValueError unless it is there exactly once."""
    at = data.find(part)
    if at < 0 or data.find(part, at + 1) >= 0:
        raise ValueError("SignedData template: a placeholder is not unique")
    return at


def _content_info(signer_id: cms.IssuerAndSerialNumber, attributes: cms.CMSAttributes,
                  certificates: list[asn1_x509.Certificate], signature: bytes) -> bytes:
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": signer_id}),
        "digest_algorithm": {"algorithm": "sha256"},
        "signed_attrs": attributes,
        "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
        "signature": signature,
    })
    data = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": {"content_type": "data"},  # detached: no content here
        "certificates": [cms.CertificateChoices({"certificate": c}) for c in certificates],
        "signer_infos": [signer_info],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": data}).dump()


def _signed_attributes(digest: bytes, signer_id: cms.IssuerAndSerialNumber,
                       now: datetime) -> cms.CMSAttributes:
    """contentType, signingTime, messageDigest (RFC 5652 11) and RFC 8551 2.5's two."""
    attributes = [
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "signing_time",
                          "values": [cms.Time({"utc_time": now.replace(microsecond=0)})]}),
        cms.CMSAttribute({"type": "message_digest", "values": [digest]}),
        cms.CMSAttribute({"type": "smime_capabilities", "values": [
            [{"capability_id": name} for name in SMIME_CAPABILITIES]]}),
        cms.CMSAttribute({"type": "encrypt_key_pref", "values": [
            cms.SMIMEEncryptionKeyPreference({"issuer_and_serial_number": signer_id})]}),
    ]
    # DER sorts the members of a SET OF by their encoding (X.690 11.6); verifiers that
    # re-encode the attributes would otherwise hash other bytes than were signed.
    return cms.CMSAttributes(sorted(attributes, key=lambda a: a.dump()))


def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


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


def read_cms(entity: bytes) -> cms.ContentInfo | None:
    """The CMS object an application/pkcs7-mime entity (or a *.p7m file part) carries."""
    head, body = split_entity(entity)
    if b"application/" not in head.lower():
        return None  # each type that may carry CMS is application/: no header parse
    headers = parse_headers(head)
    ctype = headers.get_content_type()
    filename = (headers.get_filename() or "").lower()
    if ctype not in _PKCS7_MIME and not (ctype == "application/octet-stream"
                                         and filename.endswith(".p7m")):
        return None
    return load_cms(body, str(headers.get("content-transfer-encoding", "")))


def load_cms(body: bytes, encoding: str) -> cms.ContentInfo | None:
    """The CMS object in a body of that Content-Transfer-Encoding; None when it is none.

    Strictly: a body that is a CMS object followed by anything else (junk base64 skips,
    bytes after the DER) is none, so plain text appended to a real EnvelopedData can
    never pass as "already encrypted".
    """
    try:
        if encoding.strip().lower() == "base64":
            der = base64.b64decode(b"".join(body.split()), validate=True)
        else:
            der = body
        info = cms.ContentInfo.load(der, strict=True)
        _ = info["content_type"].native  # asn1crypto parses lazily: fail here, not later
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    return info


def _unique(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """`certs` in order without repeats, so no recipient or certificate appears twice."""
    seen: list[x509.Certificate] = []
    for cert in certs:
        if cert not in seen:
            seen.append(cert)
    return seen
