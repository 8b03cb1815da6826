"""Find and check the S/MIME signature of a MIME entity (RFC 8551 3.5, RFC 5652 5).

Two forms: multipart/signed with a detached application/pkcs7-signature (RFC 1847,
"clear-signed") and application/pkcs7-mime signed-data carrying its content ("opaque").
This module answers only whether the signature is cryptographically sound: the digest
of the content matches the messageDigest attribute, the content type attribute matches
(RFC 5652 5.4, 11.1) and the signer's key made the signature over the DER signed
attributes (5.4). Whether the signer's certificate is trustworthy for the From address
is the directory validator's question (RecipientValidator.signer_problem). Nothing here
changes the entity: the mail client shows the signature itself. CPU work: call it from a
worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from gateway.transform.mime import parse_headers, part_spans, split_entity
from gateway.transform.smime import load_cms, read_cms

_SIGNATURE_TYPES = {"application/pkcs7-signature", "application/x-pkcs7-signature"}
# SHA-1 and MD5 no longer protect a signature against a forger (RFC 8551 2.1).
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

DETACHED = "clear-signed"
OPAQUE = "opaque"


@dataclass(frozen=True)
class Signature:
    """What a signature says before its certificate is judged."""

    form: str  # DETACHED or OPAQUE
    problem: str | None  # why it does not verify; None when it does
    signer: bytes | None = None  # DER of the signer's certificate, when it is included
    certificates: tuple[bytes, ...] = ()  # every certificate the signature carries (DER)
    # The certificate the signer asks replies to be encrypted to (RFC 8551 2.5.3), if
    # it is among `certificates` and is not the signer's own.
    preferred: bytes | None = None


def find_signature(entity: bytes) -> Signature | None:
    """The entity's S/MIME signature, checked; None when the entity is not signed."""
    try:
        return _find_signature(entity)
    except (ValueError, TypeError, KeyError) as e:  # asn1crypto's word for malformed input
        return Signature(DETACHED, f"the signature cannot be read: {e}")


def _find_signature(entity: bytes) -> Signature | None:
    head, body = split_entity(entity)
    headers = parse_headers(head)
    if headers.get_content_type() == "multipart/signed":
        protocol = str(headers.get_param("protocol") or "").lower()
        boundary = headers.get_param("boundary")
        if protocol not in _SIGNATURE_TYPES or not isinstance(boundary, str):
            return None
        spans = part_spans(body, boundary)
        if len(spans) != 2:
            return Signature(DETACHED, f"multipart/signed with {len(spans)} parts, not 2")
        content = body[spans[0][0]:spans[0][1]]
        sig_head, sig_body = split_entity(body[spans[1][0]:spans[1][1]])
        sig_headers = parse_headers(sig_head)
        info = load_cms(sig_body, str(sig_headers.get("content-transfer-encoding", "")))
        if info is None or info["content_type"].native != "signed_data":
            return Signature(DETACHED, "the signature part is not CMS signed-data")
        return _check(info["content"], content, DETACHED)
    info = read_cms(entity)
    if info is None or info["content_type"].native != "signed_data":
        return None
    signed = info["content"]
    content = signed["encap_content_info"]["content"].native
    if not isinstance(content, bytes):
        return Signature(OPAQUE, "signed-data without its content")
    return _check(signed, content, OPAQUE)


def _check(signed: cms.SignedData, content: bytes, form: str) -> Signature:
    """Verify the first signer that verifies; else report the first signer's problem."""
    certificates = [c.chosen for c in signed["certificates"] if c.name == "certificate"] \
        if signed["certificates"].native is not None else []
    bag = tuple(c.dump() for c in certificates)
    content_type = signed["encap_content_info"]["content_type"].native
    problems = []
    for info in signed["signer_infos"]:
        cert = _find(info["sid"], certificates)
        if cert is None:
            problems.append(Signature(form, "the signer's certificate is not included",
                                      None, bag))
            continue
        problem = _verify(info, cert, content, content_type)
        preferred = _preferred(info, certificates, cert)
        result = Signature(form, problem, cert.dump(), bag, preferred)
        if problem is None:
            return result
        problems.append(result)
    return problems[0] if problems else Signature(form, "no signer", None, bag)


def _find(sid: cms.SignerIdentifier,
          certificates: list[asn1_x509.Certificate]) -> asn1_x509.Certificate | None:
    for cert in certificates:
        if sid.name == "issuer_and_serial_number":
            if (cert.serial_number == sid.chosen["serial_number"].native
                    and cert.issuer == sid.chosen["issuer"]):
                return cert
        elif cert.key_identifier == sid.chosen.native:
            return cert
    return None


def _verify(info: cms.SignerInfo, cert: asn1_x509.Certificate, content: bytes,
            content_type: str) -> str | None:
    digest_name = info["digest_algorithm"]["algorithm"].native
    if digest_name not in _DIGESTS:
        return f"digest algorithm {digest_name} is not accepted"
    digest = _DIGESTS[digest_name]()
    attributes = info["signed_attrs"]
    if isinstance(attributes, core.Void):
        if content_type != "data":  # RFC 5652 5.3: attributes are required then
            return "signed attributes are missing"
        signed_bytes = content
    else:
        values = {a["type"].native: a["values"] for a in attributes}
        if "message_digest" not in values or "content_type" not in values:
            return "the messageDigest or contentType attribute is missing"
        hasher = hashes.Hash(digest)
        hasher.update(content)
        if values["message_digest"][0].native != hasher.finalize():
            return "the content was changed after it was signed"
        if values["content_type"][0].native != content_type:
            return "the signed content type does not match"
        signed_bytes = attributes.untag().dump()  # as a DER SET OF (RFC 5652 5.4)
    try:
        public_key = x509.load_der_x509_certificate(cert.dump()).public_key()
        _check_signature(info, public_key, info["signature"].native, signed_bytes, digest)
    except InvalidSignature:
        return "the signature does not match the signer's key"
    except (UnsupportedAlgorithm, ValueError, TypeError) as e:
        return f"the signature cannot be checked: {e}"
    return None


def _check_signature(info: cms.SignerInfo, key: object, signature: bytes, data: bytes,
                     digest: hashes.HashAlgorithm) -> None:
    """Raise InvalidSignature unless `key` signed `data`, by the SignerInfo's algorithm."""
    algorithm = info["signature_algorithm"]
    name = algorithm.signature_algo
    if name == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), digest)
    elif name == "rsassa_pss" and isinstance(key, rsa.RSAPublicKey):
        params = algorithm["parameters"]
        mgf = _DIGESTS[params["mask_gen_algorithm"]["parameters"]["algorithm"].native]()
        pss = padding.PSS(mgf=padding.MGF1(mgf), salt_length=params["salt_length"].native)
        key.verify(signature, data, pss,
                   _DIGESTS[params["hash_algorithm"]["algorithm"].native]())
    elif name == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(digest))
    elif name == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
    else:
        raise ValueError(f"{name} with a {type(key).__name__}")


def _preferred(info: cms.SignerInfo, certificates: list[asn1_x509.Certificate],
               signer: asn1_x509.Certificate) -> bytes | None:
    """The certificate an SMIMEEncryptionKeyPreference attribute names, if it came along."""
    attributes = info["signed_attrs"]
    if isinstance(attributes, core.Void):
        return None
    for attribute in attributes:
        if attribute["type"].native != "encrypt_key_pref":
            continue
        preference = attribute["values"][0]
        if preference.name != "issuer_and_serial_number":
            return None
        wanted = preference.chosen
        for cert in certificates:
            if (cert.serial_number == wanted["serial_number"].native
                    and cert.issuer == wanted["issuer"] and cert.dump() != signer.dump()):
                return cert.dump()
    return None
