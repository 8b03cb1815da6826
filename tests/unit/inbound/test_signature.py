"""Signatures made by openssl and gpgsm, checked; and the ways a signature is not sound."""

from __future__ import annotations

import hashlib

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.inbound.signature import DETACHED, OPAQUE, find_signature
from gateway.transform.smime import sign
from tests.support.partner import (
    Partner,
    crlf,
    enveloped_entity,
    multipart_signed,
    text_entity,
)
from tests.support.pki import CA, Issued

ENTITY = text_entity("Med venlig hilsen\nOle\n")


def test_openssl_clear_signed_and_opaque(tmp_path, ca: CA):
    inter = CA("Partner Issuing CA", parent=ca)
    partner = Partner(tmp_path / "p", inter.issue("ole@partner.dk"), ca)
    for entity, form in ((partner.sign(ENTITY), DETACHED),
                         (partner.sign(ENTITY, opaque=True), OPAQUE)):
        found = find_signature(entity)
        assert found is not None and found.form == form and found.problem is None
        assert found.signer == partner.identity.der
        assert inter.cert.public_bytes(Encoding.DER) in found.certificates  # for the path


def test_gpgsm_signature(partner: Partner):
    found = find_signature(partner.gpgsm_sign(ENTITY))
    assert found is not None and found.problem is None and found.signer == partner.identity.der


def test_rsa_pss_and_ecdsa_signatures(tmp_path, ca: CA, partner: Partner):
    pss = partner.openssl("-sign", "-signer", partner.cert, "-inkey", partner.key, "-binary",
                          "-keyopt", "rsa_padding_mode:pss", data=ENTITY)
    assert find_signature(crlf(pss)).problem \
        is None
    ec_partner = Partner(tmp_path / "ec", ca.issue("ec@partner.dk", ec_key=True), ca)
    assert find_signature(ec_partner.sign(ENTITY)).problem is None


def test_the_gateways_own_signature(department: Issued):
    found = find_signature(sign(ENTITY, department.cert, department.key, []))
    assert found.problem is None and found.signer == department.der
    assert found.preferred is None  # it names the signer's own certificate


def test_changed_content(partner: Partner):
    changed = partner.sign(ENTITY).replace(b"Ole", b"Bo ")
    assert find_signature(changed).problem == "the content was changed after it was signed"


def test_signer_certificate_missing(partner: Partner):
    bare = partner.openssl("-sign", "-signer", partner.cert, "-inkey", partner.key, "-binary",
                           "-nocerts", data=ENTITY)
    found = find_signature(crlf(bare))
    assert found.problem == "the signer's certificate is not included"


def test_sha1_is_not_accepted(partner: Partner):
    weak = partner.openssl("-sign", "-signer", partner.cert, "-inkey", partner.key, "-binary",
                           "-md", "sha1", data=ENTITY)
    found = find_signature(crlf(weak))
    assert found.problem == "digest algorithm sha1 is not accepted"


def test_a_signature_by_another_key(partner: Partner, ca: CA):
    forger = ca.issue("forger@partner.dk")
    signed = _signed_data(ENTITY, partner.identity, forger)  # partner's name, forger's key
    found = find_signature(multipart_signed(ENTITY, signed))
    assert found.problem == "the signature does not match the signer's key"


def test_encryption_key_preference_names_another_certificate(partner: Partner, ca: CA):
    encryption = ca.issue("ole@partner.dk", digital_signature=False)
    signed = _signed_data(ENTITY, partner.identity, partner.identity, prefer=encryption)
    found = find_signature(multipart_signed(ENTITY, signed))
    assert found.problem is None and found.preferred == encryption.der


def test_unsigned_and_unreadable(partner: Partner):
    assert find_signature(ENTITY) is None
    assert find_signature(enveloped_entity(b"\x30\x03\x02\x01\x00")) is None
    junk = multipart_signed(ENTITY, b"not cms")
    assert find_signature(junk).problem == "the signature part is not CMS signed-data"


def _signed_data(content: bytes, named: Issued, signer: Issued,
                 prefer: Issued | None = None) -> bytes:
    """A SignedData built by hand: `named`'s certificate, `signer`'s key."""
    cert = asn1_x509.Certificate.load(named.der)
    sid = cms.IssuerAndSerialNumber({"issuer": cert.issuer, "serial_number": cert.serial_number})
    attributes = [
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "message_digest",
                          "values": [hashlib.sha256(content).digest()]}),
    ]
    bag = [cert]
    if prefer is not None:
        preferred = asn1_x509.Certificate.load(prefer.der)
        bag.append(preferred)
        attributes.append(cms.CMSAttribute({"type": "encrypt_key_pref", "values": [
            cms.SMIMEEncryptionKeyPreference({"issuer_and_serial_number": {
                "issuer": preferred.issuer, "serial_number": preferred.serial_number}})]}))
    signed_attrs = cms.CMSAttributes(sorted(attributes, key=lambda a: a.dump()))
    signature = signer.key.sign(signed_attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
    data = cms.SignedData({
        "version": "v1", "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": {"content_type": "data"},
        "certificates": [cms.CertificateChoices({"certificate": c}) for c in bag],
        "signer_infos": [{"version": "v1", "sid": {"issuer_and_serial_number": sid},
                          "digest_algorithm": {"algorithm": "sha256"},
                          "signed_attrs": signed_attrs,
                          "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
                          "signature": signature}],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": data}).dump()

