"""The header block of a message as raw fields, so headers can change while the body keeps
every byte (RFC 5322 2.2 folding, RFC 2047 encoded words).
"""

from __future__ import annotations

import email.header
import re
from dataclasses import dataclass

_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")


@dataclass
class Field:
    """One header field as received: its name and the raw bytes of the whole field."""

    name: str
    raw: bytes  # "Name: value\r\n" including continuation lines

    @property
    def value(self) -> str:
        """The unfolded, RFC 2047-decoded value."""
        text = self.raw.split(b":", 1)[1].decode("utf-8", "surrogateescape")
        text = re.sub(r"\r?\n(?=[ \t])", "", text).strip()
        return decode_words(text)


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; undecodable input is kept as it is."""
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (UnicodeDecodeError, LookupError, email.errors.HeaderParseError):
        return text


def split(data: bytes) -> tuple[list[Field], bytes]:
    """Header fields and the rest (the blank line and the body), untouched."""
    m = _END_OF_HEADERS.search(data)
    head, rest = (data[: m.start()], data[m.start():]) if m else (data, b"")
    fields = parse_fields(head)
    if fields and not fields[-1].raw.endswith(b"\n"):
        fields[-1].raw += b"\r\n"
    return fields, rest


def parse_fields(head: bytes) -> list[Field]:
    """Each field of a header block with its continuation lines.

    A line that is neither a field nor a continuation cannot be parsed and is dropped.
    """
    fields: list[Field] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].raw += line
        elif b":" in line:
            fields.append(Field(line.split(b":", 1)[0].decode("ascii", "replace").strip(), line))
    return fields


def join(fields: list[Field], rest: bytes) -> bytes:
    head = b"".join(f.raw for f in fields)
    if not rest:
        return head + b"\r\n"
    return head.removesuffix(b"\r\n").removesuffix(b"\n") + rest


def get(fields: list[Field], name: str) -> str | None:
    """The first field of that name, decoded; None when absent."""
    lower = name.lower()
    return next((f.value for f in fields if f.name.lower() == lower), None)


def header_block(data: bytes) -> bytes:
    """Only the header fields, for DSNs' text/rfc822-headers part."""
    fields, _ = split(data)
    return b"".join(f.raw for f in fields)


def make_field(name: str, value: str) -> Field:
    """A new field, RFC 2047-encoded when the value is not ASCII."""
    try:
        value.encode("ascii")
        encoded = value
    except UnicodeEncodeError:
        encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return Field(name, f"{name}: {encoded}\r\n".encode("ascii"))
