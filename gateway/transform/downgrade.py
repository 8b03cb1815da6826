"""8-bit mail for a next hop without 8BITMIME: every 8-bit body becomes 7-bit (RFC 6152 3,
RFC 2045 6), as Postfix converts on output.

Text parts get quoted-printable, other parts base64; multiparts and message/rfc822 are
converted part by part (RFC 2046 5.2.1: an enclosed message keeps an identity encoding,
its parts are converted instead). Signed or encrypted content (multipart/signed,
multipart/encrypted) cannot change a byte without breaking it: such a message is not
converted but refused (ConversionImpossible, 5.6.3). Header sections are left as they
are, as Postfix leaves them: 8-bit headers without SMTPUTF8 were never 8BITMIME's.
"""

from __future__ import annotations

import re

from gateway.transform.mime import (
    CRLF,
    IDENTITY_ENCODINGS,
    check_limits,
    encode_transfer,
    header_fields,
    join_entity,
    parse_headers,
    part_spans,
    set_field,
    split_entity,
)

_UNTOUCHABLE = {"multipart/signed", "multipart/encrypted"}
_NON_ASCII = re.compile(rb"[\x80-\xff]")


class ConversionImpossible(ValueError):
    """The message needs 8BITMIME and cannot be converted without breaking it."""


def to_7bit(message: bytes) -> bytes:
    """The message with every 8-bit body 7-bit encoded; ConversionImpossible if it cannot be.

    MimeLimitError when the message is past the structure limits.
    """
    if message.isascii():
        return message
    check_limits(message)
    head, body = split_entity(message)
    converted = _entity(head, body)
    names = {name.lower() for name, _ in header_fields(head)}
    if converted != message and "mime-version" not in names:
        # Without MIME-Version a reader ignores the Content-Transfer-Encoding we write.
        head2, body2 = split_entity(converted)
        converted = join_entity(head2 + b"MIME-Version: 1.0" + CRLF, body2)
    return converted


def _entity(head: bytes, body: bytes) -> bytes:
    if body.isascii():
        return join_entity(head, body)
    headers = parse_headers(head)
    ctype = headers.get_content_type()
    if ctype in _UNTOUCHABLE:
        raise ConversionImpossible(f"{ctype} content with 8-bit data cannot be converted to "
                                   "7-bit without breaking it, and the next hop has no "
                                   "8BITMIME")
    boundary = headers.get_param("boundary")
    if headers.get_content_maintype() == "multipart" and isinstance(boundary, str):
        spans = part_spans(body, boundary)
        for start, end in reversed(spans):
            body = body[:start] + _entity(*split_entity(body[start:end])) + body[end:]
        # Preamble and epilogue are for readers without MIME: 8-bit there is just noise.
        return join_entity(head, _NON_ASCII.sub(b"?", body))
    if ctype in ("message/rfc822", "message/global"):
        return join_entity(head, _entity(*split_entity(body)))
    encoding = str(headers.get("content-transfer-encoding", "7bit")).strip().lower()
    if encoding not in IDENTITY_ENCODINGS:
        return join_entity(head, body)  # already encoded (if badly): not ours to fix
    target = "quoted-printable" if headers.get_content_maintype() == "text" else "base64"
    head = set_field(head, "Content-Transfer-Encoding", target.encode("ascii"))
    return join_entity(head, encode_transfer(body, target))
