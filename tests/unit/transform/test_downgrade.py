"""8-bit to 7-bit for a next hop without 8BITMIME (RFC 6152 3): every text reads the same."""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import quopri
from email.message import EmailMessage

import pytest

from gateway.transform.downgrade import ConversionImpossible, to_7bit

PDF = bytes(range(256)) * 4


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def rich() -> bytes:
    """Text, HTML and an enclosed message in 8bit, a PDF in binary."""
    msg = EmailMessage()
    msg["From"] = "lela@brondby.dk"
    msg["Subject"] = "bilag"
    msg.set_content("Kære Ole\n\nHun har skinnebenssår.\n", cte="8bit")
    msg.add_alternative("<p>Kære Ole</p>\n", subtype="html", cte="8bit")
    inner = EmailMessage()
    inner["Subject"] = "videresendt"
    inner.set_content("Ærø er en ø.\n", cte="8bit")
    msg.add_attachment(inner)
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="x.pdf")
    data = msg.as_bytes(policy=email.policy.SMTP)
    encoded = base64.encodebytes(PDF).replace(b"\n", b"\r\n")
    return data.replace(b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: binary"
                        ).replace(encoded, PDF + b"\r\n")


def texts(msg: EmailMessage) -> list[object]:
    return [part.get_content() for part in msg.walk() if not part.is_multipart()
            and part.get_content_type() != "message/rfc822"]


def test_every_part_converts_and_reads_the_same():
    data = rich()
    assert not data.isascii()
    out = to_7bit(data)
    assert out.isascii()
    before, after = parse(data), parse(out)
    assert texts(after) == texts(before)
    encodings = [p["Content-Transfer-Encoding"] for p in after.walk() if not p.is_multipart()
                 and p.get_content_type() != "message/rfc822"]
    assert encodings == ["quoted-printable", "quoted-printable", "quoted-printable", "base64"]


def test_ascii_mail_is_untouched():
    data = b"From: a@b.dk\r\nSubject: x\r\n\r\nhej\r\n"
    assert to_7bit(data) == data


def test_a_message_without_mime_version_gets_one():
    out = to_7bit("From: a@b.dk\r\n\r\nÆble\r\n".encode())
    assert parse(out)["MIME-Version"] == "1.0"
    assert quopri.decodestring(out.split(b"\r\n\r\n")[1]) == "Æble\r\n".encode()


@pytest.mark.parametrize("ctype", ["multipart/signed", "multipart/encrypted"])
def test_signed_or_encrypted_content_is_never_changed(ctype: str):
    data = (f'From: a@b.dk\r\nMIME-Version: 1.0\r\nContent-Type: {ctype}; boundary="s"\r\n\r\n'
            "--s\r\nContent-Type: text/plain\r\n\r\nÆ\r\n--s--\r\n").encode()
    with pytest.raises(ConversionImpossible, match="without breaking it"):
        to_7bit(data)
