"""Turn an outgoing message into the signed and encrypted message a recipient receives.

The content header fields and the body become the inner entity (RFC 8551 3.1); it gets
the department's stamp, is signed by the department (RFC 1847 multipart/signed) and
encrypted to the recipients and the department (RFC 5652 EnvelopedData). The outer
header fields stay readable: From names the person "via" the department's mailbox and
Reply-To takes the person's own address (RFC 5322 3.6.2), or the department mailbox with
`replies = "department"` (the one address the partner can encrypt a reply to). The
display name is written anew by `rawmail`, RFC 2047-encoded: decoded text is never pasted
into a header.
"""

from __future__ import annotations

import email.errors
import email.policy
import re
from collections.abc import Sequence
from functools import lru_cache

from cryptography import x509

from gateway import rawmail
from gateway.policy.departments import Department
from gateway.transform import smime
from gateway.transform.mime import CRLF, canonical, check_limits, header_fields, split_entity
from gateway.transform.stamp import add_stamp

_ENVELOPED_TYPES = {"1.2.840.113549.1.7.3", "1.2.840.113549.1.9.16.1.23"}  # (auth)EnvelopedData
# Bcc would reveal hidden recipients; Return-Path is the final MTA's; the person's
# Reply-To and Sender give way to the Reply-To this gateway writes.
_DROPPED = {"bcc", "return-path", "reply-to", "sender"}
_FOLD = re.compile(r"\r?\n[ \t]*")


def protect(message: bytes, department: Department,
            recipient_certs: Sequence[x509.Certificate]) -> bytes:
    """The message stamped, signed by `department`, encrypted to the recipients and it.

    MimeLimitError when the message is past the structure limits (it never will be).
    """
    check_limits(message)
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
                if department.config.replies == "person":
                    outer.append(b"Reply-To:" + raw.split(b":", 1)[1])
        elif lower not in _DROPPED:
            outer.append(raw)
    if original_from is None:
        outer.insert(0, _from_field(None, department))
    if department.config.replies == "department":  # the address the partner can encrypt to
        outer.append(rawmail.make_address_field("Reply-To", department.name,
                                                department.mailbox).raw)

    inner = add_stamp(b"".join(content) + CRLF + body, department.stamp)
    signed = department.signer.sign(inner)
    enveloped = smime.encrypt(signed, [*recipient_certs, department.certificate])
    return b"".join(outer) + b"MIME-Version: 1.0" + CRLF + enveloped


def is_encrypted(message: bytes) -> bool:
    """Whether the message is already S/MIME-encrypted (EnvelopedData or AuthEnvelopedData)."""
    # Labels can lie: only a body that really is EnvelopedData is let through as it is,
    # never a plain message that merely claims to be encrypted.
    info = smime.read_cms(message)
    return info is not None and info["content_type"].dotted in _ENVELOPED_TYPES


def _from_field(original: bytes | None, department: Department) -> bytes:
    """`From: "<person> via <department>" <mailbox>`, the person read from `original`."""
    person = _person(original) if original else None
    display = f"{person} via {department.name}" if person else department.name
    return rawmail.make_address_field("From", display, department.mailbox).raw


@lru_cache(maxsize=1024)
def _person(field: bytes) -> str | None:
    """The display name of the first address in a From field, else its local part.

    Remembered per process: the same people send again and again, and the `email`
    package's address parser costs a good part of a message's signing.
    """
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
