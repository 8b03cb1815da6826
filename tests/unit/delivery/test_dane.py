"""TLSA records and chain matching (RFC 7672 3, RFC 6698 2, RFC 7671 5 and 9)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.delivery.dane import DANE_EE, DANE_TA, Mismatch, Tlsa, usable, verify
from tests.support.pki import CA, NOW, Issued

MX = "mx1.dane.test"


@pytest.fixture(scope="module")
def root() -> CA:
    return CA("DANE test root")


@pytest.fixture(scope="module")
def issuing(root: CA) -> CA:
    return CA("DANE test issuing CA", parent=root)


@pytest.fixture(scope="module")
def server(issuing: CA) -> Issued:
    return issuing.issue(common_name=MX, dns_names=[MX], server=True)


def spki(issued: Issued) -> bytes:
    return issued.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ders(issued: Issued, *extra: bytes) -> list[bytes]:
    return [issued.der, *(c.public_bytes(serialization.Encoding.DER) for c in issued.chain),
            *extra]


def record(usage: int, selector: int, mtype: int, content: bytes) -> Tlsa:
    data = {0: content, 1: hashlib.sha256(content).digest(),
            2: hashlib.sha512(content).digest()}[mtype]
    return Tlsa(usage, selector, mtype, data)


@pytest.mark.parametrize(("usage", "selector", "mtype", "size", "ok"), [
    (3, 1, 1, 32, True), (3, 0, 2, 64, True), (2, 0, 1, 32, True), (3, 1, 0, 300, True),
    (0, 0, 1, 32, False), (1, 1, 1, 32, False),  # PKIX usages are not for SMTP (7672 3.1.3)
    (3, 2, 1, 32, False), (3, 1, 3, 32, False),  # unknown selector, matching type
    (3, 1, 1, 20, False),  # a digest of the wrong length
])
def test_which_records_are_usable(usage, selector, mtype, size, ok):
    assert Tlsa(usage, selector, mtype, bytes(size)).usable is ok


def test_weaker_digests_give_way_to_stronger_ones():
    sha256, sha512 = Tlsa(3, 1, 1, bytes(32)), Tlsa(3, 1, 2, bytes(64))
    other, full = Tlsa(3, 0, 1, bytes(32)), Tlsa(3, 1, 0, bytes(90))
    pkix = Tlsa(1, 1, 1, bytes(32))
    assert usable([sha256, sha512, other, full, pkix]) == (sha512, other, full)


@pytest.mark.parametrize(("selector", "mtype"), [(1, 1), (0, 1), (1, 2), (0, 0), (1, 0)])
def test_dane_ee_matches_the_server_certificate_or_key(server, selector, mtype):
    content = spki(server) if selector else server.der
    match = verify([record(DANE_EE, selector, mtype, content)], ders(server), MX)
    assert match.depth == 0 and match.record.usage == DANE_EE
    assert "matched the server certificate" in str(match)


def test_dane_ee_ignores_names_dates_and_trust():
    stranger = CA("nobody trusts me").issue(common_name="wrong.example",
                                             dns_names=["wrong.example"], server=True,
                                             not_before=NOW - timedelta(days=400),
                                             not_after=NOW - timedelta(days=30))
    match = verify([record(DANE_EE, 1, 1, spki(stranger))], [stranger.der], MX)
    assert match.depth == 0


def test_dane_ta_matches_a_ca_in_the_chain_and_checks_the_name(server, issuing):
    ta = record(DANE_TA, 0, 1, issuing.cert.public_bytes(serialization.Encoding.DER))
    match = verify([ta], ders(server), MX)
    assert match.depth == 1 and "DANE test issuing CA" in match.subject
    with pytest.raises(Mismatch, match="subjectAltName"):
        verify([ta], ders(server), "mx2.dane.test")


def test_dane_ta_may_be_the_root_when_the_server_sends_it(server, root):
    root_der = root.cert.public_bytes(serialization.Encoding.DER)
    match = verify([record(DANE_TA, 1, 2, root.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))],
        ders(server, root_der), MX)
    assert match.depth == 2


def test_dane_ta_needs_the_anchor_in_the_chain(server, root):
    ta = record(DANE_TA, 0, 1, root.cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(Mismatch, match="no CA certificate in the server's chain matches"):
        verify([ta], ders(server), MX)


def test_dane_ta_checks_the_dates_of_the_server_certificate(issuing):
    expired = issuing.issue(common_name=MX, dns_names=[MX], server=True,
                            not_before=NOW - timedelta(days=400),
                            not_after=NOW - timedelta(days=1))
    ta = record(DANE_TA, 0, 1, issuing.cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(Mismatch, match="DANE-TA 2 0 1"):
        verify([ta], ders(expired), MX)


def test_a_leaf_signed_by_another_ca_does_not_chain_to_the_anchor(issuing):
    impostor = CA("impostor CA", parent=None)
    # The server sends the genuine CA certificate, but its own was issued by another key.
    leaf = impostor.issue(common_name=MX, dns_names=[MX], server=True)
    ta = record(DANE_TA, 0, 1, issuing.cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(Mismatch, match="matches CN=DANE test issuing CA, but"):
        verify([ta], [leaf.der, issuing.cert.public_bytes(serialization.Encoding.DER)], MX)


def test_nothing_matches_says_why_record_by_record(server):
    other = CA("other").issue(common_name=MX, dns_names=[MX], server=True, ec_key=True)
    records = [record(DANE_EE, 1, 1, spki(other)), record(DANE_TA, 0, 1, other.der)]
    with pytest.raises(Mismatch) as e:
        verify(records, ders(server), MX)
    text = str(e.value)
    assert "DANE-EE 3 1 1" in text and "not the server's key" in text
    assert "DANE-TA 2 0 1" in text and "no CA certificate" in text


def test_no_certificate_or_an_unreadable_one():
    with pytest.raises(Mismatch, match="no certificate"):
        verify([Tlsa(3, 1, 1, bytes(32))], [], MX)
    with pytest.raises(Mismatch, match="cannot be read"):
        verify([Tlsa(3, 1, 1, bytes(32))], [b"not DER"], MX)


def test_records_read_well_in_logs():
    assert str(Tlsa(3, 1, 1, bytes.fromhex("ab" * 32))) == "DANE-EE 3 1 1 " + "ab" * 32
    assert str(Tlsa(3, 0, 0, bytes(100))).endswith("...")
