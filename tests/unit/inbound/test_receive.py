"""The inbound transform of a whole message: strip, decrypt, verify, learn, label."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.directory.learnt import FileStore, Learner
from gateway.directory.validate import RecipientValidator
from gateway.inbound.cms import KeyHolder
from gateway.inbound.receive import (
    DECRYPTED,
    INVALID,
    NONE,
    NOT_DECRYPTED,
    PLAIN,
    VALID,
    Receiver,
)
from tests.support.partner import Partner, text_entity
from tests.support.pki import CA, Issued

ENTITY = text_entity("Tak for sidst\n")


@pytest.fixture
async def validator(ca: CA) -> AsyncIterator[RecipientValidator]:
    made = RecipientValidator([ca.cert])
    yield made
    made.close()


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "learnt")


@pytest.fixture
def receiver(holder: KeyHolder, validator: RecipientValidator, store: FileStore) -> Receiver:
    return Receiver([holder], validator, Learner(store, validator), decrypt=True,
                    tag_header="X-Send-Sikkert")


async def test_a_signed_and_encrypted_reply(receiver: Receiver, partner: Partner,
                                            department: Issued, store: FileStore):
    signed = partner.sign(ENTITY)
    mail = partner.mail(partner.encrypt(signed, [department.cert]), to="lela@brondby.dk",
                        subject="Sv: hej", in_reply_to="<a@brondby.dk>",
                        references="<q@partner.dk> <a@brondby.dk> <b@brondby.dk>",
                        extra=["X-Send-Sikkert: yes", "X-SEND-SIKKERT-RECEIVED: decrypted=x;",
                               " signature=valid"])
    result = await receiver.receive(mail)
    assert (result.result, result.signature, result.department, result.signer) == (
        DECRYPTED, VALID, "aeldreomsorg", "ole@partner.dk")
    assert result.replied_to == ("<a@brondby.dk>", "<b@brondby.dk>", "<q@partner.dk>")
    head, body = result.data.split(b"\r\n\r\n", 1)
    fields = head.split(b"\r\n")
    assert fields[0] == (b"X-Send-Sikkert-Received: decrypted=aeldreomsorg; signature=valid; "
                         b"signer=ole@partner.dk")
    assert not any(f.lower().startswith(b"x-send-sikkert:") for f in fields)
    assert sum(f.lower().startswith(b"x-send-sikkert-received") for f in fields) == 1
    assert [f for f in fields if f.startswith(b"MIME-Version")] == [b"MIME-Version: 1.0"]
    assert b"Subject: Sv: hej" in fields and b"From: Ole Partner <ole@partner.dk>" in fields
    assert (head + b"\r\n\r\n" + body).endswith(signed.split(b"\r\n\r\n", 1)[1])
    assert b"multipart/signed" in head and b"pkcs7-mime" not in head
    assert await store.lookup("ole@partner.dk") == [partner.identity.der]


async def test_a_signature_for_another_address_teaches_nothing(receiver: Receiver,
                                                               partner: Partner,
                                                               store: FileStore):
    mail = partner.mail(partner.sign(ENTITY), to="lela@brondby.dk", sender="chef@partner.dk")
    result = await receiver.receive(mail)
    assert (result.result, result.signature, result.signer) == (PLAIN, INVALID,
                                                                "ole@partner.dk")
    assert "chef@partner.dk: does not name this address" in result.reason
    assert b"X-Send-Sikkert-Received" not in result.data
    assert await store.lookup("ole@partner.dk") == []


async def test_not_decrypted(receiver: Receiver, partner: Partner, ca: CA,
                             department: Issued, holder: KeyHolder, validator):
    elsewhere = partner.mail(partner.encrypt(ENTITY, [ca.issue("x@y.dk").cert]), to="a@b.dk")
    result = await receiver.receive(elsewhere)
    assert (result.result, result.signature) == (NOT_DECRYPTED, NONE)
    assert result.data == b"X-Send-Sikkert-Received: not-decrypted; reason=not-for-a-department" \
                          b"\r\n" + elsewhere
    off = Receiver([holder], validator, None, decrypt=False, tag_header="X-Send-Sikkert")
    mine = partner.mail(partner.encrypt(ENTITY, [department.cert]), to="a@b.dk")
    result = await off.receive(mine)
    assert result.data.startswith(b"X-Send-Sikkert-Received: not-decrypted; "
                                  b"reason=decryption-off\r\n")


async def test_without_trust_anchors_no_signature_counts(holder: KeyHolder, partner: Partner):
    blind = Receiver([holder], None, None, decrypt=True, tag_header="X-Send-Sikkert")
    result = await blind.receive(partner.mail(partner.sign(ENTITY), to="a@b.dk"))
    assert result.signature == INVALID and "no trust anchors" in result.reason


async def test_content_without_a_header_block_is_kept_as_text(receiver: Receiver,
                                                              partner: Partner,
                                                              department: Issued):
    bare = b"Hej\r\nDette er: en test\r\n"
    result = await receiver.receive(partner.mail(partner.encrypt(bare, [department.cert]),
                                                 to="a@brondby.dk"))
    assert result.result == DECRYPTED
    assert result.data.endswith(b"MIME-Version: 1.0\r\n\r\n" + bare)
