"""Raw MIME entities as bytes: split and rebuilt without re-encoding what is not changed.

The `email` package is used only to read header values (RFC 2045 parameters, RFC 2231
continuations); bodies are cut at the delimiters of RFC 2046 5.1.1 and copied as they
are, so that untouched parts and attachments keep every byte through signing (RFC 8551
3.1.1 canonical form: CRLF line ends).
"""

from __future__ import annotations

import base64
import re
import secrets
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from gateway import rawmail

CRLF = b"\r\n"
_BARE_LINE_END = re.compile(rb"\r?\n")


def canonical(data: bytes) -> bytes:
    """`data` with every line ending as CRLF, the form S/MIME signs and encrypts."""
    if data.count(b"\n") == data.count(CRLF) == data.count(b"\r"):
        return data  # already canonical (all mail that came by SMTP): no rewrite
    return _BARE_LINE_END.sub(CRLF, data)


def split_entity(entity: bytes) -> tuple[bytes, bytes]:
    """The header block (each field ending in CRLF, or empty) and the body of an entity."""
    if entity.startswith(CRLF):
        return b"", entity[2:]
    end = entity.find(CRLF + CRLF)
    if end < 0:
        return entity, b""
    return entity[: end + 2], entity[end + 4:]


def join_entity(head: bytes, body: bytes) -> bytes:
    return head + CRLF + body


def header_fields(head: bytes) -> list[tuple[str, bytes]]:
    """Each field of a header block as (name, raw bytes with its continuation lines)."""
    return [(f.name, f.raw) for f in rawmail.parse_fields(head)]


def parse_headers(head: bytes) -> Message:
    """The header block as a compat32 Message, for reading types and parameters."""
    return BytesHeaderParser(policy=compat32).parsebytes(head + CRLF)


def set_field(head: bytes, name: str, value: bytes) -> bytes:
    """The header block with field `name` replaced by (or, if absent, added as) `value`."""
    new = name.encode("ascii") + b": " + value + CRLF
    fields = header_fields(head)
    for i, (field_name, _) in enumerate(fields):
        if field_name.lower() == name.lower():
            fields[i] = (name, new)
            return b"".join(raw for _, raw in fields)
    return b"".join(raw for _, raw in fields) + new


def part_spans(body: bytes, boundary: str) -> list[tuple[int, int]]:
    """Where each body part of a multipart body starts and ends (delimiters excluded)."""
    # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1); a missing
    # close delimiter (truncated mail) lets the last part run to the end. bytes.find
    # instead of a regular expression: a search from every position of a large body
    # holds the GIL for a long time, this one takes milliseconds.
    marker = b"--" + boundary.encode("ascii", "surrogateescape")
    spans: list[tuple[int, int]] = []
    start: int | None = None
    pos = 0
    while (found := body.find(marker, pos)) >= 0:
        end = found + len(marker)
        close = body.startswith(b"--", end)
        if close:
            end += 2
        while body[end:end + 1] in (b" ", b"\t"):  # transport padding
            end += 1
        at_line_start = found == 0 or body.startswith(CRLF, found - 2)
        if not at_line_start or not (end == len(body) or body.startswith(CRLF, end)):
            pos = found + 1  # the boundary text inside a line is no delimiter
            continue
        if start is not None:
            spans.append((start, max(found - 2, 0)))
        if close:
            return spans
        start = pos = min(end + 2, len(body))
    if start is not None:
        spans.append((start, len(body)))
    return spans


def new_boundary(content: bytes) -> str:
    """A multipart boundary that does not occur in `content`."""
    while True:
        boundary = "=_sikker_" + secrets.token_hex(12)
        if boundary.encode("ascii") not in content:
            return boundary


def base64_body(data: bytes) -> bytes:
    """`data` in base64, in lines of 76 characters ending in CRLF (RFC 2045 6.8)."""
    encoded = base64.b64encode(data)
    return b"".join(encoded[i:i + 76] + CRLF for i in range(0, len(encoded), 76))
