"""The whole outgoing message: stamped, signed, encrypted, with the From/Reply-To rewrite,
read back by OpenSSL (and gpgsm) as the recipient's mail client would."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.policy
import subprocess

import pytest

from gateway.policy.departments import Department
from gateway.transform.secure import is_encrypted, protect
from tests.unit.transform.tools import (
    SAMPLES,
    STAMP,
    Gpgsm,
    OpenSSL,
    Pki,
    cert_id,
    crlf,
    enveloped_data,
    recipient_ids,
    signed_parts,
)

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256)) * 8

HEADERS = crlf("""\
Received: from pc17.brondby.dk (pc17.brondby.dk [10.1.2.17])
\tby mail.brondby.dk; Wed, 17 Jan 2018 10:30:01 +0100
Return-Path: <lela@brondby.dk>
From: Søren Ærø <soeren@brondby.dk>
Sender: sekretariat@brondby.dk
Reply-To: somewhere-else@brondby.dk
To: Ole Elsen <olelsen@dhl.dk>
Cc: hanne@brondby.dk
Bcc: skjult@example.dk
Subject: =?utf-8?q?Vedr=2E_bolig_127?=
Date: Wed, 17 Jan 2018 10:30:00 +0100
Message-ID: <rich@brondby.dk>
In-Reply-To: <earlier@dhl.dk>
References: <first@dhl.dk>
 <earlier@dhl.dk>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

""".encode())
TEXT = crlf("""\
This is a multi-part message in MIME format.
--outer
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8; format=flowed
Content-Transfer-Encoding: 8bit

Kære Ole

Din mor, cpr. 220910-1234, har skinnebenssår.\x20
--alt
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: 8bit

<html><head><meta charset="utf-8"></head><body><p>Kære Ole</p>
<p>Din mor, cpr. 220910-1234, har skinnebenssår.</p></body></html>
--alt--

--outer
Content-Type: image/png; name="sår.png"
Content-Disposition: attachment; filename="sår.png"
Content-Transfer-Encoding: base64

""".encode())
ATTACHMENTS = base64.encodebytes(PNG).replace(b"\n", b"\r\n") + crlf(
    b"--outer\n"
    b"Content-Type: text/plain; charset=iso-8859-1\n"
    b"Content-Disposition: attachment; filename=\"notat.txt\"\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"\n"
    b"Journalnotat: Gildh\xf8jhjemmet \xe6\xf8\xe5\n"
    b"--outer--\n")
RICH = HEADERS + TEXT + ATTACHMENTS


def sample(name: str) -> bytes:
    """A sample as the transform receives it: CRLF, tag header and subject tag removed."""
    data = crlf((SAMPLES / name).read_bytes())
    return data.replace(b"X-Send-Sikkert: yes\r\n", b"").replace(b"aeldreomsorg%% ", b"")


def read(message: bytes, pki: Pki, openssl: OpenSSL) -> tuple[bytes, bytes]:
    """What the recipient reads: the decrypted signed entity, and its verified content."""
    signed = openssl.decrypt(message, pki.recipient)
    return signed, openssl.verify(signed)


def outer_headers(message: bytes) -> list[bytes]:
    head = message.split(b"\r\n\r\n", 1)[0]
    return head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t").split(b"\r\n")


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


@pytest.fixture(scope="module")
def rich(department: Department, pki: Pki) -> bytes:
    return protect(RICH, department, [pki.recipient.cert])


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.eml")))
def test_every_sample_is_read_by_the_recipient_with_the_stamp_first(
        name: str, department: Department, pki: Pki, openssl: OpenSSL) -> None:
    original = sample(name)
    message = protect(original, department, [pki.recipient.cert])
    _, content = read(message, pki, openssl)
    text = parse(content)
    assert text.get_content().splitlines()[:2] == [STAMP, ""]
    assert parse(original).get_content() in text.get_content()
    body = original.split(b"\r\n\r\n", 1)[1]
    assert body[:40] not in message


def test_text_bytes_survive_after_the_stamp(department: Department, pki: Pki,
                                            openssl: OpenSSL) -> None:
    original = sample("03-cpr-and-health-tagged.eml")
    _, content = read(protect(original, department, [pki.recipient.cert]), pki, openssl)
    body = original.split(b"\r\n\r\n", 1)[1]
    assert content == (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                       b"Content-Transfer-Encoding: 8bit\r\n\r\n"
                       + STAMP.encode() + b"\r\n\r\n" + body)


def test_lf_line_ends_are_signed_in_canonical_form(department: Department, pki: Pki,
                                                   openssl: OpenSSL) -> None:
    original = sample("01-plain-no-personal-data.eml")
    message = protect(original.replace(b"\r\n", b"\n"), department, [pki.recipient.cert])
    assert read(message, pki, openssl)[1].endswith(original.split(b"\r\n\r\n", 1)[1])


def test_nothing_sensitive_is_readable_outside(rich: bytes) -> None:
    assert b"220910-1234" not in rich
    assert "skinnebenssår".encode() not in rich
    assert base64.b64encode(PNG)[:40] not in rich


def test_outer_headers_are_rewritten_and_kept(rich: bytes) -> None:
    headers = outer_headers(rich)
    original = outer_headers(RICH)
    kept = [h for h in original if h.split(b":")[0] in (
        b"Received", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"In-Reply-To",
        b"References")]
    assert len(kept) == 8 and all(h in headers for h in kept)
    assert "Reply-To: Søren Ærø <soeren@brondby.dk>".encode() in headers
    names = [h.split(b":")[0].lower() for h in headers]
    for dropped in (b"bcc", b"return-path", b"sender"):
        assert dropped not in names
    assert names.count(b"reply-to") == 1 and names.count(b"from") == 1
    assert names.count(b"mime-version") == 1 and b"MIME-Version: 1.0" in headers
    assert [n for n in names if n.startswith(b"content-")] == [
        b"content-type", b"content-transfer-encoding", b"content-disposition",
        b"content-description"]
    message = parse(rich)
    assert message.get_content_type() == "application/pkcs7-mime"
    assert message.get_param("smime-type") == "enveloped-data"
    assert message.get_filename() == "smime.p7m"
    sender = message["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == (
        "Søren Ærø via Ældre og Omsorg", "aeldreomsorg@brondby.dk")
    assert str(message["Reply-To"]) == "Søren Ærø <soeren@brondby.dk>"
    from_field = rich[:rich.index(b"\r\nReply-To:")]
    assert from_field.isascii() and all(len(line) <= 78 for line in from_field.split(b"\r\n"))


def test_attachments_and_8bit_text_survive_byte_for_byte(rich: bytes, pki: Pki,
                                                         openssl: OpenSSL) -> None:
    signed, content = read(rich, pki, openssl)
    assert signed_parts(signed)[0] == content
    # Everything after the alternatives is exactly the original's bytes.
    tail = RICH[RICH.index(b"\r\n--outer\r\nContent-Type: image/png"):]
    assert content.endswith(tail)
    plain, html, image, notes = [p for p in parse(content).walk() if not p.is_multipart()]
    assert plain.get_content().replace("\r\n", "\n") == (
        f"{STAMP}\n\nKære Ole\n\nDin mor, cpr. 220910-1234, har skinnebenssår. ")
    assert plain.get_param("format") == "flowed"
    assert html.get_content().startswith(
        f'<html><head><meta charset="utf-8"></head><body><p>{STAMP}</p><p>Kære Ole</p>')
    assert image.get_content() == PNG
    assert image.get_filename() == "sår.png"
    assert notes.get_content().startswith("Journalnotat: Gildhøjhjemmet æøå")


def test_recipients_are_exactly_the_recipient_and_the_department(
        rich: bytes, pki: Pki, openssl: OpenSSL) -> None:
    assert recipient_ids(rich) == {cert_id(pki.recipient), cert_id(pki.department)}
    assert openssl.decrypt(rich, pki.department) == openssl.decrypt(rich, pki.recipient)
    assert openssl.cannot_decrypt(rich, pki.hidden)


def test_bcc_copy_is_encrypted_to_that_recipient_alone(department: Department, pki: Pki,
                                                        openssl: OpenSSL) -> None:
    message = protect(RICH, department, [pki.hidden.cert])
    assert recipient_ids(message) == {cert_id(pki.hidden), cert_id(pki.department)}
    assert openssl.cannot_decrypt(message, pki.recipient)
    assert b"skjult@example.dk" not in message  # the Bcc header is gone too
    signed = openssl.decrypt(message, pki.hidden)
    assert openssl.verify(signed).endswith(b"--outer--\r\n")


def test_encryption_is_aes256_cbc(rich: bytes) -> None:
    algorithm = enveloped_data(rich)["encrypted_content_info"]["content_encryption_algorithm"]
    assert algorithm["algorithm"].native == "aes256_cbc"


def test_gpgsm_decrypts_and_verifies(rich: bytes, gpgsm: Gpgsm, pki: Pki,
                                     openssl: OpenSSL) -> None:
    signed = gpgsm.decrypt(rich)
    content, signature = signed_parts(signed)
    assert "Good signature" in gpgsm.verify(content, signature)
    assert content == read(rich, pki, openssl)[1]


@pytest.mark.parametrize(("from_field", "display_name"), [
    (b"From: Lene Larsen <lela@brondby.dk>", "Lene Larsen via Ældre og Omsorg"),
    ("From: Søren Ærø <soeren@brondby.dk>".encode(), "Søren Ærø via Ældre og Omsorg"),
    (b"From: =?iso-8859-1?q?S=F8ren_=C6r=F8?= <soeren@brondby.dk>",
     "Søren Ærø via Ældre og Omsorg"),
    (b'From: "Larsen, Lene" <lela@brondby.dk>', "Larsen, Lene via Ældre og Omsorg"),
    (b"From: lela@brondby.dk", "lela via Ældre og Omsorg"),
    (b"From: <lela@brondby.dk>", "lela via Ældre og Omsorg"),
])
def test_from_names_the_person_via_the_department(
        from_field: bytes, display_name: str, department: Department, pki: Pki) -> None:
    original = sample("03-cpr-and-health-tagged.eml").replace(
        b"From: Lene Larsen <lela@brondby.dk>", from_field)
    message = protect(original, department, [pki.recipient.cert])
    parsed = parse(message)
    assert parsed["From"].addresses[0].display_name == display_name
    assert parsed["From"].addresses[0].addr_spec == "aeldreomsorg@brondby.dk"
    assert b"Reply-To:" + from_field.split(b":", 1)[1] + b"\r\n" in message


def test_ascii_names_are_a_quoted_string(department: Department, pki: Pki) -> None:
    config = department.config.model_copy(update={"name": "Jobcenter Nord", "mailbox": "job@b.dk"})
    job = dataclasses.replace(department, config=config)
    message = protect(sample("03-cpr-and-health-tagged.eml"), job, [pki.recipient.cert])
    assert message.startswith(b'From: "Lene Larsen via Jobcenter Nord" <job@b.dk>\r\n'
                              b"Reply-To: Lene Larsen <lela@brondby.dk>\r\n")


def test_replies_to_the_department_mailbox(department: Department, pki: Pki) -> None:
    """With replies = "department" the partner answers the address it can encrypt to."""
    config = department.config.model_copy(update={"replies": "department"})
    routed = dataclasses.replace(department, config=config)
    for name in ("03-cpr-and-health-tagged.eml", "01-plain-no-personal-data.eml"):
        message = protect(sample(name), routed, [pki.recipient.cert])
        [reply_to] = parse(message).get_all("Reply-To")
        assert reply_to.addresses[0].addr_spec == "aeldreomsorg@brondby.dk"
        assert reply_to.addresses[0].display_name == "Ældre og Omsorg"
    no_from = sample("01-plain-no-personal-data.eml").replace(
        b"From: Signe Northeved <signo@brondby.dk>\r\n", b"")
    assert parse(protect(no_from, routed, [pki.recipient.cert]))["Reply-To"].addresses[0] \
        .addr_spec == "aeldreomsorg@brondby.dk"


def test_message_without_from_is_from_the_department(department: Department,
                                                     pki: Pki) -> None:
    original = sample("01-plain-no-personal-data.eml").replace(
        b"From: Signe Northeved <signo@brondby.dk>\r\n", b"")
    message = protect(original, department, [pki.recipient.cert])
    assert parse(message)["From"].addresses[0].display_name == "Ældre og Omsorg"
    assert b"Reply-To" not in message


def test_already_encrypted_message_passes_unchanged(rich: bytes, department: Department,
                                                    pki: Pki) -> None:
    assert is_encrypted(rich)
    assert protect(rich, department, [pki.recipient.cert]) is rich


def test_plain_text_after_a_real_enveloped_data_is_encrypted_anew(
        rich: bytes, department: Department, pki: Pki, openssl: OpenSSL) -> None:
    # The body is real EnvelopedData, then more base64 that holds plain text: as a whole
    # it is no CMS object, so it is not let through as "already encrypted".
    secret = base64.encodebytes(b"CPR 010203-1234 i klartekst\r\n")
    for tail in (secret, b"!!" + secret):
        message = rich.rstrip(b"\r\n") + b"\r\n" + tail.replace(b"\n", b"\r\n")
        assert not is_encrypted(message)
        protected = protect(message, department, [pki.recipient.cert])
        assert protected is not message and b"klartekst" not in protected
        assert tail.strip() not in protected
        assert openssl.verify(openssl.decrypt(protected, pki.recipient))


def test_message_encrypted_by_openssl_is_recognised(pki: Pki, department: Department) -> None:
    recipient_cert = pki.files(pki.recipient)[0]
    done = subprocess.run(["openssl", "cms", "-encrypt", "-aes256", str(recipient_cert)],
                          input=b"Content-Type: text/plain\r\n\r\nhemmeligt\r\n",
                          capture_output=True, check=True)
    message = (b"From: lela@brondby.dk\r\nTo: olelsen@dhl.dk\r\nSubject: x\r\n"
               + crlf(done.stdout))
    assert is_encrypted(message)
    assert protect(message, department, [pki.recipient.cert]) is message


@pytest.mark.parametrize(("content_type", "oid"), [
    (b"application/x-pkcs7-mime; name=smime.p7m", "06092a864886f70d010703"),
    (b"application/octet-stream; name=\"SMIME.P7M\"", "06092a864886f70d010703"),
    (b"application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m",
     "060b2a864886f70d0109100117"),
    (b"APPLICATION/PKCS7-MIME; smime-type=enveloped-data", "06092a864886f70d010703"),
    (b"\r\n\tApplication/Octet-Stream;\r\n name=brev.p7m", "06092a864886f70d010703"),
])
def test_other_encrypted_labels_are_recognised(content_type: bytes, oid: str) -> None:
    # A ContentInfo of type envelopedData or authEnvelopedData: only its type is read.
    der = b"\x30" + bytes([len(oid) // 2 + 4]) + bytes.fromhex(oid) + b"\xa0\x02\x30\x00"
    message = (b"From: lela@brondby.dk\r\nContent-Type: " + content_type
               + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.encodebytes(der).replace(b"\n", b"\r\n"))
    assert is_encrypted(message)


@pytest.mark.parametrize("message", [
    # Claims to be encrypted but is plain text: it must be encrypted, never let through.
    b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"cpr 220910-1234") + b"\r\n",
    b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nMIIB\r\n",
    b"Content-Type: text/plain\r\n\r\nsmime.p7m\r\n",
    b"Content-Type: application/octet-stream; name=brev.pdf\r\n\r\n%PDF\r\n",
])
def test_plain_or_signed_only_messages_are_not_encrypted(message: bytes) -> None:
    assert not is_encrypted(message)


def test_false_encryption_label_is_still_encrypted(department: Department, pki: Pki,
                                                   openssl: OpenSSL) -> None:
    original = (b"From: lela@brondby.dk\r\nTo: olelsen@dhl.dk\r\n"
                b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\n"
                b"cpr 220910-1234\r\n")
    message = protect(original, department, [pki.recipient.cert])
    assert b"220910-1234" not in message
    assert b"220910-1234" in read(message, pki, openssl)[1]


@pytest.mark.parametrize("display", [
    b"=?utf-8?q?Lene=0D=0ABcc=3A_hidden=40ast=2Edk?=",
    b"=?utf-8?q?Lene=0ABcc=3A_hidden=40ast=2Edk?=",
    b"=?utf-8?q?Lene=22=0D=0ABcc=3A_hidden=40ast=2Edk?=",
    b"=?utf-8?q?Lene=00Larsen?=",
    b"=?utf-8?q?Lene=0DLarsen?=",
    b"=?utf-8?q?Lene=0BLarsen?=",
])
@pytest.mark.parametrize("name", ["Ældre og Omsorg", "Jobcenter Nord"])
def test_from_display_name_cannot_inject_header_fields(display: bytes, name: str,
                                                        department: Department,
                                                        pki: Pki) -> None:
    config = department.config.model_copy(update={"name": name})
    department = dataclasses.replace(department, config=config)
    original = sample("03-cpr-and-health-tagged.eml").replace(
        b"From: Lene Larsen <lela@brondby.dk>", b"From: " + display + b" <lela@brondby.dk>")
    message = protect(original, department, [pki.recipient.cert])
    head = message.partition(b"\r\n\r\n")[0]
    from_field = head[:head.index(b"\r\nReply-To:")]
    assert from_field.replace(b"\r\n ", b" ").isascii()
    assert all(32 <= b < 127 for b in from_field.replace(b"\r\n ", b" ")), from_field
    assert b"\r\nBcc:" not in head and b"\nBcc:" not in head
    parsed = parse(message)
    assert parsed["From"].addresses[0].addr_spec == "aeldreomsorg@brondby.dk"
    assert "Bcc" not in parsed
