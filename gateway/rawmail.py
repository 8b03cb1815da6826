"""The header block of a message as raw fields, so headers can change while the body keeps
every byte (RFC 5322 2.2 folding, RFC 2047 encoded words, RFC 2231 5 language tags).

Everything the gateway writes into a header goes through `make_field` or
`make_address_field`: words that are not plain printable ASCII (CR, LF, NUL, any other
control character, 8-bit text, or text that would read as an encoded word) are written
as RFC 2047 encoded words, never pasted back decoded. The `email` package's folder is not
used for this: it writes CR LF and "=?...?=" found in a value back as they are.
"""

from __future__ import annotations

import binascii
import codecs
import re
from dataclasses import dataclass

_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
# RFC 2047 2, read as leniently as Python's email package reads it ("?" in the text).
_ENCODED_WORD = re.compile(r"=\?(?P<charset>[^?\s]+)\?(?P<encoding>[qQbB])\?(?P<text>[^\s]*?)\?=")
_PRINTABLE = re.compile(r"[!-~]*")  # a word that may stand in a header as it is
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")  # RFC 5322 3.2.3
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_ENCODED_TEXT_MAX = 50  # "=?utf-8?q?" + 50 + "?=": 62, within RFC 2047 2's 75 after "Name: "
_PLAIN_WORD_MAX = 72  # a longer word could not be folded under 78 characters: encode it
_LINE_MAX = 78  # RFC 5322 2.1.1


@dataclass
class Field:
    """One header field as received: its name and the raw bytes of the whole field."""

    name: str
    raw: bytes  # "Name: value\r\n" including continuation lines

    @property
    def value(self) -> str:
        """The unfolded, RFC 2047-decoded value."""
        return self.decoded[0]

    @property
    def decoded(self) -> tuple[str, bool]:
        """The unfolded, decoded value, and whether every encoded word could be decoded."""
        text = self.raw.split(b":", 1)[1].decode("utf-8", "surrogateescape")
        return decode_words_checked(_UNFOLD.sub("", text).strip())


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words; what cannot be decoded is read as Latin-1."""
    return decode_words_checked(text)[0]


def decode_words_checked(text: str) -> tuple[str, bool]:
    """The decoded text, and False when an encoded word was unreadable.

    An unknown charset, bytes that are not valid in their charset, or base64 or
    quoted-printable that is broken make the word unreadable; what could be read of it
    is then taken as Latin-1, so ASCII in it (a subject keyword) still shows. Callers
    that decide on the text must treat False as "may say anything".
    """
    out: list[str] = []
    readable, end, after_word = True, 0, False
    for m in _ENCODED_WORD.finditer(text):
        between = text[end:m.start()]
        if not (after_word and not between.strip(" \t\r\n")):  # RFC 2047 6.2
            out.append(between)
        word, ok = _decode_word(m["charset"], m["encoding"], m["text"])
        out.append(word)
        readable = readable and ok
        end, after_word = m.end(), True
    out.append(text[end:])
    return "".join(out), readable


def _decode_word(charset: str, encoding: str, encoded: str) -> tuple[str, bool]:
    charset = charset.split("*", 1)[0]  # RFC 2231 5: "charset*language"
    ok = True
    raw = encoded.encode("ascii", "surrogateescape")
    if encoding in "bB":
        try:
            data = binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
        except binascii.Error:
            ok = False
            data = binascii.a2b_base64(re.sub(rb"[^A-Za-z0-9+/]", b"", raw) + b"==")
    else:
        ok = not re.search(rb"=(?![0-9A-Fa-f]{2})", raw)
        data = binascii.a2b_qp(raw.replace(b"_", b" "))
    try:
        return data.decode(codecs.lookup(charset).name), ok
    except (LookupError, UnicodeDecodeError):
        return data.decode("latin-1"), False


def split(data: bytes) -> tuple[list[Field], bytes]:
    """Header fields and the rest (the blank line and the body), untouched."""
    m = _END_OF_HEADERS.search(data)
    head, rest = (data[: m.start()], data[m.start():]) if m else (data, b"")
    fields = parse_fields(head)
    if fields and not fields[-1].raw.endswith(b"\n"):
        fields[-1].raw += b"\r\n"
    return fields, rest


def head_fields(data: bytes) -> list[Field]:
    """The header fields only: the body is neither parsed nor copied (25 MB stay 25 MB)."""
    m = _END_OF_HEADERS.search(data)
    return split(data[: m.start()] if m else data)[0]


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


def all_named(fields: list[Field], name: str) -> list[Field]:
    """Every field of that name, in order."""
    lower = name.lower()
    return [f for f in fields if f.name.lower() == lower]


def header_block(data: bytes) -> bytes:
    """Only the header fields, for DSNs' text/rfc822-headers part."""
    fields, _ = split(data)
    return b"".join(f.raw for f in fields)


def make_field(name: str, value: str) -> Field:
    """A new unstructured field (RFC 5322 3.2.5) holding `value`, encoded and folded."""
    return Field(name, _fold(name, _words(value.strip(" "))))


def make_address_field(name: str, display: str, address: str) -> Field:
    """`Name: "display" <address>`: a quoted string when `display` is printable ASCII,
    else atoms and RFC 2047 encoded words (RFC 2047 5(3)); `address` is a checked mailbox."""
    display = display.strip(" ")
    if _PRINTABLE.fullmatch(display.replace(" ", "")):
        quoted = display.replace("\\", "\\\\").replace('"', '\\"')
        line = f'{name}: "{quoted}" <{address}>'
        if len(line) <= _LINE_MAX:
            return Field(name, line.encode("ascii") + b"\r\n")
    return Field(name, _fold(name, [*_words(display, atoms_only=True), f"<{address}>"]))


def _words(text: str, atoms_only: bool = False) -> list[str]:
    """`text` as space-separated pieces: plain words as they are, the rest encoded.

    Words that need encoding are encoded together with the spaces between them, and
    plain words stay plain: adjacent encoded words would lose or (in some readers,
    Python's among them) double the space between them.
    """
    pieces: list[str] = []
    run: list[str] = []
    plain = _ATEXT if atoms_only else _PRINTABLE
    for word in text.split(" "):
        if word and plain.fullmatch(word) and "=?" not in word and len(word) <= _PLAIN_WORD_MAX:
            if run:
                pieces += _encoded_words(" ".join(run))
                run = []
            pieces.append(word)
        elif word or run:
            run.append(word)
        else:
            pieces.append("")  # one more space between plain words
    if run:
        pieces += _encoded_words(" ".join(run))
    return pieces


def _encoded_words(text: str) -> list[str]:
    """`text` as Q-encoded UTF-8 words of at most 75 characters each."""
    words, current = [], ""
    for char in text:
        encoded = "_" if char == " " else "".join(
            chr(b) if b in _Q_SAFE else f"={b:02X}" for b in _utf8(char))
        if len(current) + len(encoded) > _ENCODED_TEXT_MAX:
            words.append(current)
            current = ""
        current += encoded
    words.append(current)
    return [f"=?utf-8?q?{word}?=" for word in words]


def _utf8(char: str) -> bytes:
    """A character as UTF-8; a byte that came in undecodable (8-bit, not UTF-8, kept as a
    surrogate escape) is read as Latin-1, as old clients meant it."""
    try:
        return char.encode("utf-8")
    except UnicodeEncodeError:
        return char.encode("utf-8", "surrogateescape").decode("latin-1").encode("utf-8")


def _fold(name: str, pieces: list[str]) -> bytes:
    """A header field of space-separated `pieces`, folded before 78 characters.

    A fold never comes before an empty piece (an extra space), so no line is blank.
    """
    field, width = name + ":", len(name) + 1
    for piece in pieces:
        if piece and width + 1 + len(piece) > _LINE_MAX:  # also right after a long name
            field += "\r\n"
            width = 0
        field += " " + piece
        width += 1 + len(piece)
    return field.encode("ascii") + b"\r\n"
