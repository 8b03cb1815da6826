"""The stamp goes first in the main text; every other byte stays where it was."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy

from gateway.transform.stamp import add_stamp
from tests.unit.transform.tools import STAMP, crlf

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def parse(entity: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(entity, policy=email.policy.default)


def content(part: email.message.EmailMessage) -> str | bytes:
    """The decoded content, text with LF line ends for easy comparison."""
    value = part.get_content()
    return value.replace("\r\n", "\n") if isinstance(value, str) else value


def head_and_body(entity: bytes) -> tuple[bytes, bytes]:
    head, body = entity.split(b"\r\n\r\n", 1)
    return head, body


def test_utf8_plain_text_gets_stamp_line_and_blank_line_and_keeps_its_bytes() -> None:
    body = "Kære Ole\r\n\r\nHun har skinnebenssår.\r\n".encode()
    entity = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n" \
             b"\r\n" + body
    stamped = add_stamp(entity, STAMP)
    head, new_body = head_and_body(stamped)
    assert head == head_and_body(entity)[0]
    assert new_body == STAMP.encode() + b"\r\n\r\n" + body


def test_latin1_part_stays_latin1_when_the_stamp_fits() -> None:
    entity = b"Content-Type: text/plain; charset=iso-8859-1\r\n" \
             b"Content-Transfer-Encoding: 8bit\r\n\r\nS\xf8ren \xc6r\xf8\r\n"
    stamped = add_stamp(entity, STAMP)
    assert head_and_body(stamped)[1] == STAMP.encode("latin-1") + b"\r\n\r\nS\xf8ren \xc6r\xf8\r\n"
    assert content(parse(stamped)) == f"{STAMP}\n\nSøren Ærø\n"


def test_latin1_part_becomes_utf8_when_the_stamp_does_not_fit() -> None:
    entity = b"Content-Type: text/plain; charset=iso-8859-1; format=flowed\r\n" \
             b"Content-Transfer-Encoding: 8bit\r\n\r\nS\xf8ren \xc6r\xf8\r\n"
    stamp = "Sendt sikkert via Łódź € afdeling"
    message = parse(add_stamp(entity, stamp))
    assert message.get_content_charset() == "utf-8"
    assert message.get_param("format") == "flowed"
    assert content(message) == f"{stamp}\n\nSøren Ærø\n"


def test_charset_switch_keeps_other_parameter_bytes() -> None:
    entity = b"Content-Type: text/plain;\r\n charset=\"us-ascii\"; x-note=\"S\xc3\xb8ren\"\r\n" \
             b"\r\nHello\r\n"
    head = add_stamp(entity, STAMP).split(b"\r\n\r\n", 1)[0]
    assert head == b"Content-Type: text/plain; charset=utf-8; x-note=\"S\xc3\xb8ren\"\r\n" \
                   b"Content-Transfer-Encoding: 8bit"


def test_us_ascii_7bit_part_becomes_utf8_8bit() -> None:
    entity = b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n" \
             b"\r\nHello\r\n"
    stamped = add_stamp(entity, STAMP)
    message = parse(stamped)
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "8bit"
    assert content(message) == f"{STAMP}\n\nHello\n"


def test_part_without_content_headers_is_plain_us_ascii_and_becomes_utf8() -> None:
    message = parse(add_stamp(b"\r\nHello\r\n", STAMP))
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert content(message) == f"{STAMP}\n\nHello\n"


def test_quoted_printable_part_is_stamped_in_its_encoding() -> None:
    text = "Vedr. klagen fremsendes hermed uddybende svar.\r\nKonsulent, Ældre og Omsorg\r\n"
    entity = b"Content-Type: text/plain; charset=utf-8\r\n" \
             b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" \
             + binascii.b2a_qp(text.encode())
    stamped = add_stamp(entity, STAMP)
    body = head_and_body(stamped)[1]
    assert body.isascii()
    assert binascii.a2b_qp(body) == f"{STAMP}\r\n\r\n{text}".encode()


def test_base64_part_is_stamped_in_its_encoding() -> None:
    text = "Kære Henrik\r\n\r\nTak for din henvendelse.\r\n"
    entity = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n" \
             b"\r\n" + base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    body = head_and_body(add_stamp(entity, STAMP))[1]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    assert base64.b64decode(body) == f"{STAMP}\r\n\r\n{text}".encode()


def test_html_gets_escaped_first_paragraph_inside_body_as_character_references() -> None:
    entity = b"Content-Type: text/html; charset=us-ascii\r\n\r\n" \
             b"<!DOCTYPE html>\r\n<html><head><title>x</title></head>\r\n" \
             b"<BODY class=\"m\">\r\n<p>Hej</p>\r\n</BODY></html>\r\n"
    stamped = add_stamp(entity, "Sendt <sikkert> via Ældre & Omsorg")
    assert head_and_body(stamped)[0] == head_and_body(entity)[0]
    assert b'<BODY class="m"><p>Sendt &lt;sikkert&gt; via &#198;ldre &amp; Omsorg</p>\r\n<p>Hej' \
        in stamped
    assert stamped.replace(b"<p>Sendt &lt;sikkert&gt; via &#198;ldre &amp; Omsorg</p>", b"") \
        == entity


def test_html_in_utf8_keeps_charset_and_other_bytes() -> None:
    html = "<html><body><p>Søren Ærø</p></body></html>\r\n".encode()
    entity = b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n" \
             b"\r\n" + html
    stamped = add_stamp(entity, STAMP)
    assert head_and_body(stamped)[1] == html.replace(
        b"<body>", b"<body><p>" + STAMP.encode() + b"</p>")


def test_utf16_text_is_transcoded_to_utf8() -> None:
    entity = b"Content-Type: text/plain; charset=utf-16\r\nContent-Transfer-Encoding: base64\r\n" \
             b"\r\n" + base64.b64encode("Hej Søren\r\n".encode("utf-16")) + b"\r\n"
    message = parse(add_stamp(entity, STAMP))
    assert message.get_content_charset() == "utf-8"
    assert content(message) == f"{STAMP}\n\nHej Søren\n"


def mixed_message() -> tuple[bytes, bytes, bytes]:
    """A multipart/mixed of (plain, html) alternatives, a text attachment and an image."""
    text_attachment = crlf(b"Content-Type: text/plain; charset=utf-8\n"
                           b"Content-Disposition: attachment; filename=\"journal.txt\"\n"
                           b"Content-Transfer-Encoding: 8bit\n\n"
                           + "Journalnotat: skinnebenssår\n".encode())
    image = crlf(b"Content-Type: image/png; name=\"foto.png\"\n"
                 b"Content-Disposition: attachment; filename=\"foto.png\"\n"
                 b"Content-Transfer-Encoding: base64\n\n") \
        + base64.encodebytes(PNG).replace(b"\n", b"\r\n")
    entity = crlf(b"MIME-Version: 1.0\n"
                  b"Content-Type: multipart/mixed;\n boundary=\"outer\"\n\n"
                  b"This is a multi-part message in MIME format.\n"
                  b"--outer\n"
                  b"Content-Type: multipart/alternative; boundary=\"alt\"\n\n"
                  b"--alt\n"
                  b"Content-Type: text/plain; charset=utf-8\n"
                  b"Content-Transfer-Encoding: 8bit\n\n"
                  + "Kære Ole\n".encode()
                  + b"--alt\n"
                  b"Content-Type: text/html; charset=utf-8\n"
                  b"Content-Transfer-Encoding: quoted-printable\n\n"
                  b"<html><body><p>K=C3=A6re Ole</p></body></html>\n"
                  b"--alt--\n"
                  b"--outer\n") + text_attachment + b"\r\n--outer\r\n" + image \
        + b"\r\n--outer--\r\nepilogue\r\n"
    return entity, text_attachment, image


def leaves(entity: bytes) -> list[email.message.EmailMessage]:
    return [p for p in parse(entity).walk() if not p.is_multipart()]


def test_multipart_stamps_every_alternative_and_no_attachment() -> None:
    entity, text_attachment, image = mixed_message()
    stamped = add_stamp(entity, STAMP)
    # Everything after the alternatives is byte for byte the same.
    tail = b"\r\n--outer\r\n" + text_attachment + b"\r\n--outer\r\n" + image \
        + b"\r\n--outer--\r\nepilogue\r\n"
    assert entity.endswith(tail) and stamped.endswith(tail)
    assert stamped.startswith(entity.split(b"--alt\r\n", 1)[0])
    plain, html, journal, foto = leaves(stamped)
    assert content(plain) == f"{STAMP}\n\nKære Ole"  # the last CRLF is the delimiter's
    assert content(html).startswith(f"<html><body><p>{STAMP}</p><p>Kære Ole")
    assert content(journal) == "Journalnotat: skinnebenssår\n"
    assert content(foto) == PNG


def test_multipart_related_stamps_only_its_root() -> None:
    entity = crlf(b"Content-Type: multipart/related; boundary=rel\n\n"
                  b"--rel\nContent-Type: text/html; charset=utf-8\n\n<body>Hej</body>\n"
                  b"--rel\nContent-Type: text/plain; charset=utf-8\nContent-ID: <x>\n\nextra\n"
                  b"--rel--\n")
    html, extra = leaves(add_stamp(entity, STAMP))
    assert content(html).startswith(f"<body><p>{STAMP}</p>Hej")
    assert content(extra) == "extra"


def assert_wrapped(stamped: bytes, entity: bytes) -> None:
    """`stamped` is a new multipart/mixed: the stamp, then `entity` untouched."""
    message = parse(stamped)
    assert message.get_content_type() == "multipart/mixed"
    first = next(message.iter_parts())
    assert first.get_content_type() == "text/plain"
    assert content(first) == STAMP + "\n"
    assert b"\r\n" + entity + b"\r\n--" + message.get_boundary().encode() + b"--\r\n" in stamped


def test_message_without_text_body_gets_the_stamp_as_first_part() -> None:
    entity = crlf(b"Content-Type: application/pdf; name=brev.pdf\n"
                  b"Content-Transfer-Encoding: base64\n\n") + base64.encodebytes(PNG)
    assert_wrapped(add_stamp(entity, STAMP), entity)


def test_text_that_is_only_an_attachment_is_not_changed() -> None:
    entity = crlf(b"Content-Type: multipart/mixed; boundary=b\n\n"
                  b"--b\nContent-Type: text/plain\nContent-Disposition: attachment\n\nfil\n"
                  b"--b--\n")
    assert_wrapped(add_stamp(entity, STAMP), entity)


def test_senders_own_signature_is_not_broken() -> None:
    entity = crlf(b"Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\";\n"
                  b" micalg=sha-256; boundary=s\n\n"
                  b"--s\nContent-Type: text/plain\n\nsigned text\n"
                  b"--s\nContent-Type: application/pkcs7-signature\n\nAAAA\n--s--\n")
    assert_wrapped(add_stamp(entity, STAMP), entity)


def test_text_that_does_not_match_its_charset_is_not_rewritten() -> None:
    # Declared us-ascii but holds UTF-8: transcoding would garble it, so wrap instead.
    entity = b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + "Søren\r\n".encode()
    assert_wrapped(add_stamp(entity, STAMP), entity)


def test_unknown_charset_is_not_rewritten() -> None:
    entity = b"Content-Type: text/plain; charset=x-made-up\r\n\r\nHej\r\n"
    assert_wrapped(add_stamp(entity, STAMP), entity)
