"""Decrypt CMS enveloped content addressed to a department's key (RFC 5652 6, RFC 5083).

EnvelopedData with AES-128/192/256-CBC (RFC 3565) and AuthEnvelopedData with AES-GCM
(RFC 5084); the content-encryption key comes by RSA key transport, PKCS#1 v1.5 or
RSAES-OAEP (RFC 8017 7, RFC 3560). The RecipientInfo meant for a key is found by issuer
and serial number or by subject key identifier (RFC 5652 6.2.1). asn1crypto reads the
structures, because cryptography's own PKCS#7 decryption knows neither GCM, OAEP,
AES-192 nor key identifiers; cryptography does the arithmetic. All of it is CPU work:
call it from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# Reasons, as they appear in `X-Send-Sikkert-Received: not-decrypted; reason=...`.
MALFORMED = "malformed"
NOT_FOR_A_DEPARTMENT = "not-for-a-department"
UNSUPPORTED = "unsupported-algorithm"
FAILED = "decryption-failed"

ENVELOPED = "enveloped_data"
AUTH_ENVELOPED = "authenticated_enveloped_data"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
    "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}
_CBC = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
_GCM = {"aes128_gcm": 16, "aes192_gcm": 24, "aes256_gcm": 32}


class GcmParameters(core.Sequence):
    """RFC 5084 3.2 GCMParameters (asn1crypto leaves them unparsed)."""

    _fields = [
        ("aes_nonce", core.OctetString),
        ("aes_icvlen", core.Integer, {"default": 12}),
    ]


class NotDecrypted(Exception):
    """The content cannot be decrypted: `reason` is a token for the header, `detail` for logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class KeyHolder:
    """One key the gateway may decrypt with: a department's certificate and private key."""

    name: str
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey


@dataclass(frozen=True)
class Opened:
    """Decrypted content and what it was decrypted with."""

    holder: KeyHolder
    content: bytes
    cipher: str  # e.g. "aes256_cbc"


def decrypt(info: cms.ContentInfo, holders: Sequence[KeyHolder]) -> Opened:
    """The content of EnvelopedData or AuthEnvelopedData for one of `holders`; NotDecrypted."""
    try:
        kind = info["content_type"].native
        if kind not in (ENVELOPED, AUTH_ENVELOPED):
            raise NotDecrypted(MALFORMED, f"not enveloped data but {kind}")
        enveloped = info["content"]
        recipients = list(enveloped["recipient_infos"])
        matches = [(ri.chosen, h) for ri in recipients for h in holders
                   if ri.name == "ktri" and _names(ri.chosen["rid"], h.certificate)]
        if not matches:
            raise NotDecrypted(NOT_FOR_A_DEPARTMENT,
                               f"{len(recipients)} recipient(s), none a department certificate")
        failures = []
        for recipient, holder in matches:
            try:
                key = _unwrap(recipient, holder.key)
                content, cipher = _open_content(enveloped, kind, key)
            except NotDecrypted as e:
                failures.append(e)
                continue
            return Opened(holder, content, cipher)
        raise failures[0]
    except (ValueError, TypeError, KeyError) as e:  # asn1crypto's word for malformed input
        raise NotDecrypted(MALFORMED, str(e) or type(e).__name__) from None


def _names(rid: cms.RecipientIdentifier, cert: x509.Certificate) -> bool:
    """Whether the RecipientIdentifier names `cert` (RFC 5652 6.2.1)."""
    if rid.name == "issuer_and_serial_number":
        wanted = rid.chosen
        if wanted["serial_number"].native != cert.serial_number:
            return False
        # asn1crypto compares names as RFC 5280 7.1 says, not byte for byte.
        return wanted["issuer"] == asn1_x509.Name.load(cert.issuer.public_bytes())
    return rid.chosen.native == subject_key_id(cert)


def subject_key_id(cert: x509.Certificate) -> bytes:
    """The certificate's subject key identifier, or RFC 5280 4.2.1.2's method 1 without one."""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _unwrap(recipient: cms.KeyTransRecipientInfo, key: rsa.RSAPrivateKey) -> bytes:
    """The content-encryption key, by RSA PKCS#1 v1.5 or RSAES-OAEP."""
    algorithm = recipient["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        scheme: padding.AsymmetricPadding = padding.PKCS1v15()
    elif name == "rsaes_oaep":
        scheme = _oaep(algorithm["parameters"])
    else:
        raise NotDecrypted(UNSUPPORTED, f"key transport {name}")
    try:
        # PKCS#1 v1.5 answers a wrong key with random bytes (implicit rejection, against
        # Bleichenbacher's attack): the content decryption then fails instead.
        return key.decrypt(recipient["encrypted_key"].native, scheme)
    except ValueError:
        raise NotDecrypted(FAILED, f"{name} key transport failed") from None


def _oaep(params: cms.RSAESOAEPParams | core.Void) -> padding.OAEP:
    if not isinstance(params, cms.RSAESOAEPParams):  # absent: every default (RFC 8017 A.2.1)
        params = cms.RSAESOAEPParams({})
    digest = _hash(params["hash_algorithm"]["algorithm"].native)
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1":
        raise NotDecrypted(UNSUPPORTED, f"OAEP mask generation {mgf['algorithm'].native}")
    label = params["p_source_algorithm"]["parameters"].native or None
    return padding.OAEP(mgf=padding.MGF1(_hash(mgf["parameters"]["algorithm"].native)),
                        algorithm=digest, label=label)


def _hash(name: str) -> hashes.HashAlgorithm:
    if name not in _HASHES:
        raise NotDecrypted(UNSUPPORTED, f"hash {name}")
    return _HASHES[name]()


def _open_content(enveloped: cms.EnvelopedData | cms.AuthEnvelopedData, kind: str,
                  key: bytes) -> tuple[bytes, str]:
    field = "encrypted_content_info" if kind == ENVELOPED else "auth_encrypted_content_info"
    info = enveloped[field]
    algorithm = info["content_encryption_algorithm"]
    name = algorithm["algorithm"].native
    ciphertext = info["encrypted_content"].native
    if ciphertext is None:
        raise NotDecrypted(MALFORMED, "no encrypted content (detached)")
    if kind == ENVELOPED and name in _CBC:
        _check_key(key, _CBC[name])
        iv = algorithm["parameters"].native
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        unpadder = block_padding.PKCS7(128).unpadder()
        try:
            padded = decryptor.update(ciphertext) + decryptor.finalize()
            return unpadder.update(padded) + unpadder.finalize(), name
        except ValueError:
            raise NotDecrypted(FAILED, f"{name}: bad padding (wrong key or damaged)") from None
    if kind == AUTH_ENVELOPED and name in _GCM:
        _check_key(key, _GCM[name])
        params = GcmParameters.load(algorithm["parameters"].dump())
        mac = enveloped["mac"].native
        if len(mac) != params["aes_icvlen"].native or not 12 <= len(mac) <= 16:
            raise NotDecrypted(MALFORMED, f"{name}: authentication tag of {len(mac)} bytes")
        decryptor = Cipher(algorithms.AES(key),
                           modes.GCM(params["aes_nonce"].native, mac,
                                     min_tag_length=len(mac))).decryptor()
        attributes = enveloped["auth_attrs"]
        if attributes.native is not None:  # authenticated as a DER SET OF (RFC 5083 2.2)
            decryptor.authenticate_additional_data(attributes.untag().dump())
        try:
            return decryptor.update(ciphertext) + decryptor.finalize(), name
        except InvalidTag:
            raise NotDecrypted(FAILED, f"{name}: authentication failed") from None
    raise NotDecrypted(UNSUPPORTED, f"content encryption {name}"
                       + (" outside AuthEnvelopedData" if name in _GCM else ""))


def _check_key(key: bytes, length: int) -> None:
    if len(key) != length:
        raise NotDecrypted(FAILED, f"content key of {len(key)} bytes, {length} expected")
