"""CMS decryption of what openssl and gpgsm encrypt to a department certificate."""

from __future__ import annotations

import pytest
from asn1crypto import cms as asn1_cms

from gateway.inbound.cms import (
    FAILED,
    MALFORMED,
    NOT_FOR_A_DEPARTMENT,
    UNSUPPORTED,
    KeyHolder,
    NotDecrypted,
    decrypt,
)
from tests.support.partner import Partner, body_der, text_entity
from tests.support.pki import CA, Issued, rsa_key

ENTITY = text_entity("Kære afdeling\nTak for svaret.\n")


def content_info(entity: bytes) -> asn1_cms.ContentInfo:
    return asn1_cms.ContentInfo.load(body_der(entity))


@pytest.mark.parametrize(("options", "cipher"), [
    ({"cipher": "aes128"}, "aes128_cbc"),
    ({"cipher": "aes192"}, "aes192_cbc"),
    ({"cipher": "aes256"}, "aes256_cbc"),
    ({"cipher": "aes-128-gcm"}, "aes128_gcm"),
    ({"cipher": "aes-192-gcm"}, "aes192_gcm"),
    ({"cipher": "aes-256-gcm"}, "aes256_gcm"),
    ({"oaep": True}, "aes256_cbc"),
    ({"keyid": True}, "aes256_cbc"),
    ({"oaep": True, "keyid": True, "cipher": "aes-256-gcm"}, "aes256_gcm"),
])
def test_openssl_ciphers_and_key_transports(partner: Partner, department: Issued,
                                            holder: KeyHolder, ca: CA, options, cipher):
    other = ca.issue("nogen@andre.dk")
    encrypted = partner.encrypt(ENTITY, [other.cert, department.cert], **options)
    opened = decrypt(content_info(encrypted), [holder])
    assert (opened.content, opened.cipher, opened.holder) == (ENTITY, cipher, holder)


def test_gpgsm_encryption(partner: Partner, department: Issued, holder: KeyHolder):
    opened = decrypt(content_info(partner.gpgsm_encrypt(ENTITY, [department.cert])), [holder])
    assert opened.content == ENTITY


def test_the_matching_department_of_several_decrypts(partner: Partner, ca: CA,
                                                     holder: KeyHolder):
    jobcenter = ca.issue("jobcenter@brondby.dk")
    other = KeyHolder("jobcenter", jobcenter.cert, jobcenter.key)
    opened = decrypt(content_info(partner.encrypt(ENTITY, [jobcenter.cert])), [holder, other])
    assert opened.holder == other


def test_encrypted_to_someone_else(partner: Partner, ca: CA, holder: KeyHolder):
    with pytest.raises(NotDecrypted) as caught:
        decrypt(content_info(partner.encrypt(ENTITY, [ca.issue("x@y.dk").cert])), [holder])
    assert caught.value.reason == NOT_FOR_A_DEPARTMENT
    assert "1 recipient(s)" in caught.value.detail


def test_a_key_that_does_not_fit_fails_without_output(partner: Partner, department: Issued):
    # A fresh key: one from the shared pool may be the department's own.
    wrong = KeyHolder("aeldreomsorg", department.cert, rsa_key(fresh=True))
    for cipher in ("aes256", "aes-256-gcm"):
        with pytest.raises(NotDecrypted) as caught:
            decrypt(content_info(partner.encrypt(ENTITY, [department.cert], cipher=cipher)),
                    [wrong])
        assert caught.value.reason == FAILED


def test_changed_gcm_content_fails_authentication(partner: Partner, department: Issued,
                                                  holder: KeyHolder):
    info = content_info(partner.encrypt(ENTITY, [department.cert], cipher="aes-128-gcm"))
    content = info["content"]["auth_encrypted_content_info"]
    ciphertext = bytearray(content["encrypted_content"].native)
    ciphertext[0] ^= 1
    content["encrypted_content"] = bytes(ciphertext)
    with pytest.raises(NotDecrypted) as caught:
        decrypt(asn1_cms.ContentInfo.load(info.dump(force=True)), [holder])
    assert (caught.value.reason, caught.value.detail) == (FAILED,
                                                          "aes128_gcm: authentication failed")


def test_other_ciphers_are_refused(partner: Partner, department: Issued, holder: KeyHolder):
    with pytest.raises(NotDecrypted) as caught:
        decrypt(content_info(partner.encrypt(ENTITY, [department.cert], cipher="des3")),
                [holder])
    assert caught.value.reason == UNSUPPORTED
    assert "tripledes" in caught.value.detail


def test_malformed_structures(partner: Partner, holder: KeyHolder):
    oid = bytes.fromhex("06092a864886f70d010703")  # envelopedData, with an empty SEQUENCE
    empty = asn1_cms.ContentInfo.load(b"\x30\x0f" + oid + b"\xa0\x02\x30\x00")
    with pytest.raises(NotDecrypted) as caught:
        decrypt(empty, [holder])
    assert caught.value.reason == MALFORMED
    signed = asn1_cms.ContentInfo.load(body_der(partner.sign(ENTITY, opaque=True)))
    with pytest.raises(NotDecrypted) as caught:
        decrypt(signed, [holder])
    assert caught.value.reason == MALFORMED
