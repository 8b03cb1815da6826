"""Signing and encryption, read back by OpenSSL and gpgsm rather than by ourselves."""

from __future__ import annotations

import email
import hashlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.transform.smime import Signer, encrypt, sign
from tests.unit.transform.tools import (
    Gpgsm,
    OpenSSL,
    Pki,
    cert_id,
    enveloped_data,
    recipient_ids,
    signed_data,
    signed_parts,
    whole_signed_data,
)

SHA256 = "2.16.840.1.101.3.4.2.1"
AES_256_CBC = "2.16.840.1.101.3.4.1.42"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"  # PKCS#1 v1.5 key transport
ENTITY = ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
          "Kære Ole\r\n\r\nHun har skinnebenssår.  \r\n").encode()


@pytest.fixture(scope="module")
def signed(pki: Pki) -> bytes:
    dep = pki.department
    return sign(ENTITY, dep.cert, dep.key, dep.chain)


def test_sign_makes_detached_multipart_signed_with_sha256(signed: bytes) -> None:
    message = email.message_from_bytes(signed)
    assert message.get_content_type() == "multipart/signed"
    assert message.get_param("protocol") == "application/pkcs7-signature"
    assert message.get_param("micalg") == "sha-256"
    content, signature_part = message.get_payload()
    assert signature_part.get_content_type() == "application/pkcs7-signature"
    assert signature_part["Content-Transfer-Encoding"] == "base64"


def test_openssl_verifies_signature_and_chain_to_the_root(signed: bytes,
                                                          openssl: OpenSSL) -> None:
    assert openssl.verify(signed) == ENTITY


def test_signature_covers_the_exact_bytes_in_the_multipart(signed: bytes, gpgsm: Gpgsm) -> None:
    content, signature = signed_parts(signed)
    assert content == ENTITY
    info = signed_data(signature)["signer_infos"][0]
    attributes = {a["type"].native: a["values"][0].native for a in info["signed_attrs"]}
    assert attributes["message_digest"] == hashlib.sha256(content).digest()
    # gpgsm checks the detached signature over these bytes with no line-end conversion.
    assert "Good signature" in gpgsm.verify(content, signature)


def test_signature_uses_sha256_and_carries_certificate_and_chain(signed: bytes,
                                                                 pki: Pki) -> None:
    data = signed_data(signed_parts(signed)[1])
    assert [a["algorithm"].dotted for a in data["digest_algorithms"]] == [SHA256]
    assert data["signer_infos"][0]["digest_algorithm"]["algorithm"].dotted == SHA256
    carried = {c.chosen.dump() for c in data["certificates"]}
    expected = [pki.department.cert, *pki.department.chain]
    assert len(pki.department.chain) == 1  # the issuing CA: the chain is really there
    assert carried == {c.public_bytes(serialization.Encoding.DER) for c in expected}


def test_sign_signs_the_canonical_crlf_form(pki: Pki, openssl: OpenSSL) -> None:
    dep = pki.department
    signed = sign(b"Content-Type: text/plain\n\nline one\nline two\n", dep.cert, dep.key,
                  dep.chain)
    content = b"Content-Type: text/plain\r\n\r\nline one\r\nline two\r\n"
    assert signed_parts(signed)[0] == content
    assert openssl.verify(signed) == content


@pytest.fixture(scope="module")
def signer(pki: Pki) -> Signer:
    """One Signer for many messages, as a department keeps one."""
    dep = pki.department
    return Signer(dep.cert, dep.key, dep.chain)


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=3000),
       now=st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(2049, 12, 31),
                        timezones=st.just(UTC)),
       offset=st.integers(min_value=-12 * 60, max_value=14 * 60))
def test_signer_template_equals_signed_data_built_whole(pki: Pki, signer: Signer,
                                                        content: bytes, now: datetime,
                                                        offset: int) -> None:
    """The values put into the template give the very DER asn1crypto builds from scratch,
    whatever the digest and the time (also given in another zone than UTC)."""
    dep = pki.department
    local = now.astimezone(timezone(timedelta(minutes=offset)))
    assert signer.signed_data(content, local) == whole_signed_data(content, dep.cert, dep.key,
                                                                   dep.chain, now)


@pytest.mark.parametrize("year", [1949, 2050])
def test_signer_refuses_a_time_utctime_cannot_hold(signer: Signer, year: int) -> None:
    with pytest.raises(ValueError, match="UTCTime"):
        signer.signed_data(b"x", datetime(year, 6, 1, tzinfo=UTC))


def test_one_signer_signs_many_messages_each_verified(signer: Signer, openssl: OpenSSL) -> None:
    for text in (b"first", b"second, longer than the first", b""):
        entity = b"Content-Type: text/plain\r\n\r\n" + text + b"\r\n"
        assert openssl.verify(signer.sign(entity)) == entity


@pytest.fixture(scope="module")
def encrypted(pki: Pki) -> bytes:
    # The department certificate twice: it must still be one recipient.
    return encrypt(ENTITY, [pki.recipient.cert, pki.department.cert, pki.department.cert])


def test_encrypt_makes_the_contract_enveloped_data_entity(encrypted: bytes) -> None:
    head = encrypted.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m" \
        in head
    assert b"Content-Disposition: attachment; filename=smime.p7m" in head
    assert b"Content-Transfer-Encoding: base64" in head
    body = encrypted.split(b"\r\n\r\n", 1)[1]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))


def test_encrypt_uses_aes256_cbc_and_rsa_key_transport(encrypted: bytes) -> None:
    data = enveloped_data(encrypted)
    algorithm = data["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"]
    assert algorithm.dotted == AES_256_CBC
    for info in data["recipient_infos"]:
        assert info.name == "ktri"
        assert info.chosen["key_encryption_algorithm"]["algorithm"].dotted == RSA_ENCRYPTION


def test_encrypt_names_exactly_the_recipients(encrypted: bytes, pki: Pki) -> None:
    assert recipient_ids(encrypted) == {cert_id(pki.recipient), cert_id(pki.department)}


def test_every_recipient_and_nobody_else_can_decrypt(encrypted: bytes, pki: Pki,
                                                     openssl: OpenSSL) -> None:
    assert openssl.decrypt(encrypted, pki.recipient) == ENTITY
    assert openssl.decrypt(encrypted, pki.department) == ENTITY
    assert openssl.cannot_decrypt(encrypted, pki.hidden)


def test_gpgsm_decrypts(encrypted: bytes, gpgsm: Gpgsm) -> None:
    assert gpgsm.decrypt(encrypted) == ENTITY


def test_encrypt_refuses_no_recipients() -> None:
    with pytest.raises(ValueError):
        encrypt(ENTITY, [])


def test_signature_tells_partners_how_to_answer_encrypted(signed: bytes, pki: Pki) -> None:
    """RFC 8551 2.5: the capabilities, AES-256-CBC first, and the certificate to encrypt to."""
    info = signed_data(signed_parts(signed)[1])["signer_infos"][0]
    attributes = {a["type"].native: a["values"] for a in info["signed_attrs"]}
    assert [c["capability_id"].dotted for c in attributes["smime_capabilities"][0]] == [
        AES_256_CBC, "2.16.840.1.101.3.4.1.22", "2.16.840.1.101.3.4.1.2"]
    preference = attributes["encrypt_key_pref"][0]
    assert preference.name == "issuer_and_serial_number"
    assert cert_id(pki.department) == (preference.chosen["issuer"].dump(),
                                       preference.chosen["serial_number"].native)
    assert attributes["content_type"][0].native == "data"
    assert attributes["signing_time"][0].native is not None
    # DER: a SET OF is sorted by encoding, so verifiers that re-encode hash the same bytes.
    encoded = [a.dump() for a in info["signed_attrs"]]
    assert encoded == sorted(encoded)
