"""Raw MIME entities as bytes: split and rebuilt without re-encoding what is not changed.

The `email` package is used only to read header values (RFC 2045 parameters, RFC 2231
continuations); bodies are cut at the delimiters of RFC 2046 5.1.1 and copied as they
are, so that untouched parts and attachments keep every byte through signing (RFC 8551
3.1.1 canonical form: CRLF line ends).

`walk` visits every entity of a message without recursion and holds the structure
limits: at most MAX_DEPTH levels of multipart and message/rfc822 nesting (Postfix's
mime_nesting_limit) and MAX_PARTS entities. A message past them can never be changed
(stamped, signed, converted), so it is refused outright, never retried.
"""

from __future__ import annotations

import base64
import binascii
import email.quoprimime
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from gateway import rawmail

CRLF = b"\r\n"
_BARE_LINE_END = re.compile(rb"\r?\n")
IDENTITY_ENCODINGS = {"7bit", "8bit", "binary"}
MAX_DEPTH = 100  # nesting levels (Postfix mime_nesting_limit)
MAX_PARTS = 1000  # entities in one message, the message itself included


class MimeLimitError(ValueError):
    """The message nests deeper or holds more parts than the gateway will change."""


@dataclass(frozen=True)
class Part:
    """One entity found by `walk`: its header block, and where its body lies in the data."""

    depth: int  # 0 for the message itself
    head: bytes
    body_start: int
    body_end: int


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


def part_spans(body: bytes, boundary: str, start: int = 0,
               end: int | None = None) -> list[tuple[int, int]]:
    """Where each body part of a multipart body starts and ends (delimiters excluded).

    `start` and `end` bound the body inside a larger buffer, so nothing is copied.
    """
    # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1); a missing
    # close delimiter (truncated mail) lets the last part run to the end. bytes.find
    # instead of a regular expression: a search from every position of a large body
    # holds the GIL for a long time, this one takes milliseconds.
    limit = len(body) if end is None else end
    marker = b"--" + boundary.encode("ascii", "surrogateescape")
    spans: list[tuple[int, int]] = []
    begin: int | None = None
    pos = start
    while (found := body.find(marker, pos, limit)) >= 0:
        stop = found + len(marker)
        close = body.startswith(b"--", stop, limit)
        if close:
            stop += 2
        while stop < limit and body[stop:stop + 1] in (b" ", b"\t"):  # transport padding
            stop += 1
        at_line_start = found == start or (found - 2 >= start
                                           and body.startswith(CRLF, found - 2))
        if not at_line_start or not (stop == limit or body.startswith(CRLF, stop, limit)):
            pos = found + 1  # the boundary text inside a line is no delimiter
            continue
        if begin is not None:
            spans.append((begin, max(found - 2, start)))
        if close:
            return spans
        begin = pos = min(stop + 2, limit)
    if begin is not None:
        spans.append((begin, limit))
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
    lines = [encoded[i:i + 76] for i in range(0, len(encoded), 76)]
    return CRLF.join(lines) + CRLF if lines else b""


def decode_transfer(body: bytes, encoding: str) -> bytes:
    """A body's bytes under its Content-Transfer-Encoding (RFC 2045 6); ValueError if unknown."""
    if encoding in IDENTITY_ENCODINGS:
        return body
    if encoding == "base64":
        return base64.b64decode(body)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    raise ValueError(f"unknown Content-Transfer-Encoding {encoding}")


def encode_transfer(data: bytes, encoding: str) -> bytes:
    """`data` in a Content-Transfer-Encoding; identity encodings leave it as it is."""
    if encoding == "base64":
        return base64_body(data)
    if encoding == "quoted-printable":
        # quoprimime works on bytes held as latin-1 text, one character per byte.
        return email.quoprimime.body_encode(data.decode("latin-1"), eol="\r\n").encode("ascii")
    return data


def check_limits(data: bytes) -> None:
    """MimeLimitError when the message is past the structure limits."""
    for _ in walk(data):
        pass


def walk(data: bytes, max_depth: int = MAX_DEPTH, max_parts: int = MAX_PARTS) -> Iterator[Part]:
    """Every entity of a message, parents before their parts; MimeLimitError past a limit.

    Works on offsets into `data`, so deep nesting copies nothing and uses no recursion.
    """
    stack = [(0, 0, len(data))]
    count = 0
    while stack:
        depth, start, end = stack.pop()
        count += 1
        if count > max_parts:
            raise MimeLimitError(f"more than {max_parts} MIME parts")
        if data.startswith(CRLF, start):
            head, body_start = b"", start + 2
        else:
            cut = data.find(CRLF + CRLF, start, end)
            head, body_start = (data[start:end], end) if cut < 0 else (data[start:cut + 2],
                                                                        cut + 4)
        part = Part(depth, head, body_start, end)
        yield part
        children = _children(data, part)
        if children and depth + 1 > max_depth:
            raise MimeLimitError(f"MIME parts nested more than {max_depth} deep")
        stack += [(depth + 1, s, e) for s, e in reversed(children)]


def _children(data: bytes, part: Part) -> list[tuple[int, int]]:
    """The spans of a multipart's body parts, or of a message/rfc822's message."""
    lower = part.head.lower()
    if b"multipart" not in lower and b"message/" not in lower:
        return []  # a type token is never encoded: no need to parse this header block
    headers = parse_headers(part.head)
    ctype = headers.get_content_type()
    if ctype in ("message/rfc822", "message/global"):
        return [(part.body_start, part.body_end)]
    boundary = headers.get_param("boundary")
    if headers.get_content_maintype() != "multipart" or not isinstance(boundary, str):
        return []
    return part_spans(data, boundary, part.body_start, part.body_end)
