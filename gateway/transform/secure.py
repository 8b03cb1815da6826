"""Turn an outgoing message into the signed and encrypted message a recipient receives.

The content header fields and the body become the inner entity (RFC 8551 3.1); it gets
the department's stamp, is signed by the department (RFC 1847 multipart/signed) and
encrypted to the recipients and the department (RFC 5652 EnvelopedData). The outer
header fields stay readable: From names the person "via" the department's mailbox and
Reply-To takes the person's own address (RFC 5322 3.6.2), encoded by RFC 2047.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.policy
import re
from collections.abc import Sequence

from asn1crypto import cms
from cryptography import x509

from gateway.policy.departments import Department
from gateway.transform import smime
from gateway.transform.mime import CRLF, canonical, header_fields, parse_headers, split_entity
from gateway.transform.stamp import add_stamp

_PKCS7_MIME = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
_ENVELOPED_TYPES = {"1.2.840.113549.1.7.3", "1.2.840.113549.1.9.16.1.23"}  # (auth)EnvelopedData
# Bcc would reveal hidden recipients; Return-Path is the final MTA's; the person's
# Reply-To and Sender give way to the Reply-To this gateway writes.
_DROPPED = {"bcc", "return-path", "reply-to", "sender"}
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")  # RFC 5322 atext
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_ENCODED_TEXT_MAX = 63  # "=?utf-8?q?" + 63 + "?=": 75 characters (RFC 2047 2)
_LINE_MAX = 78  # RFC 5322 2.1.1
_FOLD = re.compile(r"\r?\n[ \t]*")


def protect(message: bytes, department: Department,
            recipient_certs: Sequence[x509.Certificate]) -> bytes:
    """The message stamped, signed by `department`, encrypted to the recipients and it."""
    if is_encrypted(message):
        return message
    # SMTP already guarantees CRLF; other callers get the form the signature covers.
    head, body = split_entity(canonical(message))
    content: list[bytes] = []
    outer: list[bytes] = []
    original_from: bytes | None = None
    for name, raw in header_fields(head):
        lower = name.lower()
        if lower.startswith("content-") or lower == "mime-version":
            content.append(raw)
        elif lower == "from":
            if original_from is None:
                original_from = raw
                outer.append(_from_field(raw, department))
                outer.append(b"Reply-To:" + raw.split(b":", 1)[1])
        elif lower not in _DROPPED:
            outer.append(raw)
    if original_from is None:
        outer.insert(0, _from_field(None, department))

    inner = add_stamp(b"".join(content) + CRLF + body, department.stamp)
    signed = smime.sign(inner, department.certificate, department.key, department.chain)
    enveloped = smime.encrypt(signed, [*recipient_certs, department.certificate])
    return b"".join(outer) + b"MIME-Version: 1.0" + CRLF + enveloped


def is_encrypted(message: bytes) -> bool:
    """Whether the message is already S/MIME-encrypted (EnvelopedData or AuthEnvelopedData)."""
    head, body = split_entity(message)
    headers = parse_headers(head)
    ctype = headers.get_content_type()
    filename = (headers.get_filename() or "").lower()
    if ctype not in _PKCS7_MIME and not (ctype == "application/octet-stream"
                                         and filename.endswith(".p7m")):
        return False
    # Labels can lie: only a body that really is EnvelopedData is let through as it is,
    # never a plain message that merely claims to be encrypted.
    encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
    try:
        der = base64.b64decode(body) if encoding == "base64" else body
        return cms.ContentInfo.load(der)["content_type"].dotted in _ENVELOPED_TYPES
    except (ValueError, TypeError, binascii.Error):
        return False


def _from_field(original: bytes | None, department: Department) -> bytes:
    """`From: "<person> via <department>" <mailbox>`, the person read from `original`."""
    person = _person(original) if original else None
    display = f"{person} via {department.name}" if person else department.name
    if display.isascii():
        quoted = display.replace("\\", "\\\\").replace('"', '\\"')
        return f'From: "{quoted}" <{department.mailbox}>'.encode("ascii") + CRLF
    return _fold("From", [*_phrase(display), f"<{department.mailbox}>"])


def _person(field: bytes) -> str | None:
    """The display name of the first address in a From field, else its local part."""
    # Header bytes may be raw UTF-8 (RFC 6532) or, from old clients, Latin-1.
    raw = field.split(b":", 1)[1]
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        value = raw.decode("latin-1")
    value = _FOLD.sub(" ", value).strip()
    try:
        addresses = email.policy.default.header_factory("from", value).addresses
    except (ValueError, email.errors.HeaderParseError):
        return None
    if not addresses:
        return None
    return addresses[0].display_name.strip() or addresses[0].username or None


def _phrase(display: str) -> list[str]:
    """A display name as atoms and RFC 2047 encoded words (RFC 2047 5(3))."""
    # Words that need encoding are encoded together with the spaces between them, and
    # plain words stay plain: adjacent encoded words would lose or (in some readers,
    # Python's among them) double the space between them.
    pieces: list[str] = []
    run: list[str] = []
    for word in display.split():
        if _ATOM.fullmatch(word) and "=?" not in word:  # "=?" would read as an encoded word
            if run:
                pieces += _encoded_words(" ".join(run))
                run = []
            pieces.append(word)
        else:
            run.append(word)
    if run:
        pieces += _encoded_words(" ".join(run))
    return pieces


def _encoded_words(text: str) -> list[str]:
    """`text` as Q-encoded UTF-8 words of at most 75 characters each."""
    words, current = [], ""
    for char in text:
        encoded = "_" if char == " " else "".join(
            chr(b) if b in _Q_SAFE else f"={b:02X}" for b in char.encode("utf-8"))
        if len(current) + len(encoded) > _ENCODED_TEXT_MAX:
            words.append(current)
            current = ""
        current += encoded
    words.append(current)
    return [f"=?utf-8?q?{word}?=" for word in words]


def _fold(name: str, pieces: list[str]) -> bytes:
    """A header field of space-separated `pieces`, folded before 78 characters."""
    field, width = name + ":", len(name) + 1
    for piece in pieces:
        if width + 1 + len(piece) > _LINE_MAX and width > len(name) + 1:
            field += "\r\n"
            width = 0
        field += " " + piece
        width += 1 + len(piece)
    return field.encode("ascii") + CRLF
