"""Put the department's stamp, the sender's receipt, at the top of a message's text.

The stamp becomes the first line of every main-body text/plain part (followed by a blank
line) and the first paragraph inside <body> of every main-body text/html part (RFC 2045,
RFC 2046). Attachments, and every part that is not changed, keep every byte. A part whose
charset cannot carry the stamp is re-encoded as UTF-8; a message without a text body that
can be changed gets the stamp as a new first part of a multipart/mixed (RFC 2046 5.1.3).
"""

from __future__ import annotations

import binascii
import codecs
import html
import re
from collections.abc import Callable
from email.message import Message

from gateway.transform.mime import (
    CRLF,
    decode_transfer,
    encode_transfer,
    header_fields,
    join_entity,
    new_boundary,
    parse_headers,
    part_spans,
    set_field,
    split_entity,
)

# A sender's own signature or encryption would break if we touched what is inside; a
# digest's parts default to message/rfc822, which a part parsed alone would not know.
_UNTOUCHABLE = {"multipart/signed", "multipart/encrypted", "multipart/digest"}
_BODY_TAG = re.compile(rb"<body(?:\s[^>]*)?>", re.IGNORECASE)
_HEAD_END = re.compile(rb"</head\s*>", re.IGNORECASE)
_HTML_TAG = re.compile(rb"<html(?:\s[^>]*)?>", re.IGNORECASE)
_FOLD = re.compile(rb"\r?\n[ \t]*")
_CHARSET_PARAM = re.compile(rb';\s*charset\s*=\s*("[^"]*"|[^;\s]*)', re.IGNORECASE)

# Inserts the stamp into decoded text in an ASCII-compatible charset; None when the
# stamp cannot be written in that charset.
_Editor = Callable[[bytes, str, str], bytes | None]


def add_stamp(entity: bytes, stamp: str) -> bytes:
    """The MIME entity with `stamp` as the first line of its main text."""
    stamped = _stamp_entity(entity, stamp)
    return stamped if stamped is not None else _wrap(entity, stamp)


def _stamp_entity(entity: bytes, stamp: str) -> bytes | None:
    """The entity with its main text stamped, or None when it has no text we can change."""
    head, body = split_entity(entity)
    headers = parse_headers(head)
    if _is_attachment(headers):
        return None
    ctype = headers.get_content_type()
    if ctype == "text/plain":
        return _stamp_text(head, headers, body, stamp, _plain)
    if ctype == "text/html":
        return _stamp_text(head, headers, body, stamp, _html)
    boundary = headers.get_param("boundary")
    if headers.get_content_maintype() != "multipart" or ctype in _UNTOUCHABLE or \
            not isinstance(boundary, str):
        return None
    spans = part_spans(body, boundary)
    # Alternatives are the same text in other forms, so each gets the stamp; in any
    # other multipart the first part is the body and the rest are attachments or extras.
    chosen = spans if ctype == "multipart/alternative" else spans[:1]
    changed = False
    for start, end in reversed(chosen):  # from the end, so earlier spans stay valid
        stamped = _stamp_entity(body[start:end], stamp)
        if stamped is not None:
            body = body[:start] + stamped + body[end:]
            changed = True
    return join_entity(head, body) if changed else None


def _is_attachment(headers: Message) -> bool:
    # A named text part is a file the sender attached, even when shown inline.
    # (get_filename also reads the older Content-Type `name` parameter.)
    return headers.get_content_disposition() == "attachment" or headers.get_filename() is not None


def _plain(text: bytes, charset: str, stamp: str) -> bytes | None:
    try:
        return (stamp + "\r\n\r\n").encode(charset) + text
    except UnicodeEncodeError:
        return None


def _html(text: bytes, charset: str, stamp: str) -> bytes:
    # Character references carry any stamp in any charset, so the part keeps its charset
    # and no <meta charset> inside the document can contradict it.
    paragraph = f"<p>{html.escape(stamp)}</p>".encode(charset, "xmlcharrefreplace")
    # <body> may be left out (HTML 5 13.1.2.4); then the body begins after </head> or <html>,
    # and never before a <!DOCTYPE>, which would throw the reader into quirks mode.
    tag = _BODY_TAG.search(text) or _HEAD_END.search(text) or _HTML_TAG.search(text)
    at = tag.end() if tag else 0
    return text[:at] + paragraph + text[at:]


def _stamp_text(head: bytes, headers: Message, body: bytes, stamp: str,
                edit: _Editor) -> bytes | None:
    encoding = str(headers.get("content-transfer-encoding", "7bit")).strip().lower()
    charset = headers.get_content_charset("us-ascii")
    try:
        codecs.lookup(charset)
        text = decode_transfer(body, encoding)
    except (LookupError, ValueError, binascii.Error):
        return None
    edited = edit(text, charset, stamp) if _ascii_compatible(charset) else None
    if edited is None:
        try:
            utf8 = text.decode(charset).encode("utf-8")
        except UnicodeDecodeError:
            return None
        edited = edit(utf8, "utf-8", stamp)
        assert edited is not None  # UTF-8 can write any stamp
        head = set_field(head, "Content-Type", _with_charset(head, "utf-8"))
    if encoding == "7bit" and not edited.isascii():
        encoding = "8bit"
        head = set_field(head, "Content-Transfer-Encoding", b"8bit")
    return join_entity(head, encode_transfer(edited, encoding))


def _ascii_compatible(charset: str) -> bool:
    """Whether ASCII text is the same bytes in `charset` (not so for UTF-16, UTF-32)."""
    sample = "\r\n<>az09 "
    try:
        return sample.encode(charset) == sample.encode("ascii")
    except UnicodeEncodeError:
        return False


def _with_charset(head: bytes, charset: str) -> bytes:
    """The part's Content-Type value with `charset`, every other byte as it was."""
    # Read from the raw field: the email package would mangle 8-bit parameter values.
    field = next((raw for name, raw in header_fields(head) if name.lower() == "content-type"),
                 None)
    param = b"; charset=" + charset.encode("ascii")
    if field is None:
        return b"text/plain" + param
    value = _FOLD.sub(b" ", field.split(b":", 1)[1]).strip()
    changed, found = _CHARSET_PARAM.subn(param, value, count=1)
    return changed if found else value + param


def _wrap(entity: bytes, stamp: str) -> bytes:
    """A multipart/mixed whose first part is the stamp and whose second is `entity`."""
    boundary = new_boundary(entity)
    delimiter = b"--" + boundary.encode("ascii")
    stamp_part = (b"Content-Type: text/plain; charset=utf-8" + CRLF
                  + b"Content-Transfer-Encoding: 8bit" + CRLF
                  + b"Content-Disposition: inline" + CRLF
                  + CRLF + stamp.encode("utf-8") + CRLF)
    head = f'Content-Type: multipart/mixed; boundary="{boundary}"'.encode("ascii") + CRLF
    return join_entity(head, delimiter + CRLF + stamp_part + CRLF + delimiter + CRLF + entity
                       + CRLF + delimiter + b"--" + CRLF)
