"""Turn an outgoing message into the signed and encrypted message a recipient receives.

The content header fields and the body become the inner entity (RFC 8551 3.1); it gets
the department's stamp, is signed by the department (RFC 1847 multipart/signed) and
encrypted to the recipients and the department (RFC 5652 EnvelopedData). The outer
header fields stay readable: From names the person "via" the department's mailbox and
Reply-To takes the person's own address (RFC 5322 3.6.2). The display name is written
anew by `rawmail`, RFC 2047-encoded: decoded text is never pasted into a header.
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

from gateway import rawmail
from gateway.policy.departments import Department
from gateway.transform import smime
from gateway.transform.mime import CRLF, canonical, header_fields, parse_headers, split_entity
from gateway.transform.stamp import add_stamp

_PKCS7_MIME = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
_ENVELOPED_TYPES = {"1.2.840.113549.1.7.3", "1.2.840.113549.1.9.16.1.23"}  # (auth)EnvelopedData
# Bcc would reveal hidden recipients; Return-Path is the final MTA's; the person's
# Reply-To and Sender give way to the Reply-To this gateway writes.
_DROPPED = {"bcc", "return-path", "reply-to", "sender"}
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
    return rawmail.make_address_field("From", display, department.mailbox).raw


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
