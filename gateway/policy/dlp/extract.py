"""The text a person could read in a message, part by part, as the DLP scan sees it.

The subject is RFC 2047-decoded. Each MIME part (RFC 2045, 2046) is transfer-decoded
(base64, quoted-printable) and charset-decoded (`text`); HTML loses its tags and its
entities are decoded. Attachments are read by what they are, not only by what they are
called: text types (CSV too), PDF, OOXML, OpenDocument, ZIP archives and attached
messages (message/rfc822), recursively. The raw transfer encoding is never scanned, so an
image's base64 that happens to hold ten digits is never a finding.

The message is read in pieces (`pieces`) and its text handed on in pieces to a `Sink`
(the scan's detector, or a collector of whole texts); what must be read whole (PDF, OOXML,
ZIP) is spilled to a temporary file once it is large. The work is bounded by `Limits`.
What could not be read in full (an encrypted PDF or ZIP, a damaged file, a limit reached)
is recorded as a `Gap`; the rest is still scanned.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import IO, Literal, Protocol

from gateway import rawmail
from gateway.policy.dlp import documents
from gateway.policy.dlp.cpr import mask_text
from gateway.policy.dlp.pieces import (
    CHUNK,
    HEAD_MAX,
    Parts,
    Reader,
    file_pieces,
    first_bytes,
    spilled,
    split_head,
    transfer_decoded,
)
from gateway.policy.dlp.text import Kind, TextOut, TextPart
from gateway.transform.mime import parse_headers

Where = Literal["subject", "body", "attachment"]
GapReason = Literal["encrypted", "unreadable", "unsupported", "limit"]

MiB = 1024 * 1024

_TEXT_TYPES = {"application/json", "application/xml", "application/csv", "application/x-csv",
               "application/vnd.ms-excel.csv"}  # besides text/*
_TEXT_EXTENSIONS = {"txt", "csv", "tsv", "json", "xml", "md", "log", "ics", "vcf", "htm", "html"}
_MESSAGE_TYPES = {"message/rfc822", "message/global"}
_ENCRYPTED_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime",
                    "application/pgp-encrypted"}
_SNIFF = 1024  # leading bytes that tell a PDF, a ZIP archive or an OLE file
LIGHT_HTML = 1 << 20  # bytes of HTML a light scan reads (html.parser is pure Python)


class Heavy(Exception):
    """A light scan met what it must not read where it runs (a PDF, an Office document or
    a ZIP archive, or more than LIGHT_HTML bytes of HTML): scan it again elsewhere."""


@dataclass(frozen=True)
class Limits:
    """How much one scan may read; past a limit the rest is left out and a Gap says so."""

    max_bytes: int = 100 * MiB  # content of parts and archive members, in all
    max_parts: int = 1000  # MIME parts and archive members
    max_depth: int = 10  # nesting of multiparts, attached messages and archives
    max_text: int = 32 * MiB  # characters of text scanned, in all
    max_pdf_pages: int = 2000  # per PDF


@dataclass(frozen=True)
class Text:
    """Readable text from one place of the message."""

    where: Where
    name: str  # the attachment's file name (CPR numbers in it masked), "" otherwise
    text: str


@dataclass(frozen=True)
class Gap:
    """A part that was not scanned in full, and why."""

    reason: GapReason
    name: str  # the attachment, or "" for the message itself
    detail: str


class Sink(Protocol):
    """What takes the text of a message, one place at a time."""

    def open(self, where: Where, name: str) -> TextOut: ...


@dataclass
class Extraction:
    """What one message yielded: its text (handed to `sink`), and its gaps."""

    limits: Limits
    sink: Sink
    light: bool = False  # raise Heavy rather than read documents or much HTML
    gaps: list[Gap] = field(default_factory=list)
    html_read: int = 0
    bytes_read: int = 0
    parts: int = 0
    chars: int = 0

    def gap(self, reason: GapReason, name: str, detail: str) -> None:
        if not any(g.reason == reason and g.name == name for g in self.gaps):
            self.gaps.append(Gap(reason, name, detail))

    def open(self, where: Where, name: str) -> TextOut:
        """The text of one place, counted against max_text."""
        return _Counted(self, name, self.sink.open(where, name),
                        room=self.limits.max_text - self.chars)

    def add(self, where: Where, name: str, text: str) -> None:
        out = self.open(where, name)
        out.write(text)
        out.close()

    def take_part(self, name: str) -> bool:
        """Count one more part; False (and a gap) past max_parts."""
        self.parts += 1
        if self.parts > self.limits.max_parts:
            self.gap("limit", name, f"more than {self.limits.max_parts} parts")
            return False
        return True

    def take_bytes(self, size: int, name: str) -> bool:
        """Count `size` more bytes to read; False (and a gap) past max_bytes."""
        if self.bytes_read + size > self.limits.max_bytes:
            self._over_bytes(name)
            return False
        self.bytes_read += size
        return True

    def counted(self, pieces: Iterable[bytes], name: str) -> Iterator[bytes]:
        """`pieces` as long as they stay within max_bytes; the rest left out (and a gap)."""
        for piece in pieces:
            room = self.limits.max_bytes - self.bytes_read
            if len(piece) > room:
                self._over_bytes(name)
                self.bytes_read += room
                if room:
                    yield piece[:room]
                return
            self.bytes_read += len(piece)
            yield piece

    def _over_bytes(self, name: str) -> None:
        self.gap("limit", name, f"more than {self.limits.max_bytes} bytes of content")


class _Counted:
    """One place's text, cut at the characters left of max_text (then a gap)."""

    def __init__(self, extraction: Extraction, name: str, out: TextOut, room: int) -> None:
        self._extraction = extraction
        self._name = name
        self._out = out
        self._room = room
        self._written = 0
        self._cut = False

    def write(self, text: str) -> None:
        if self._written + len(text) > self._room:
            text = text[:max(self._room - self._written, 0)]
            self._cut = True
        if text:
            self._written += len(text)
            self._out.write(text)

    def close(self, keep: bool = True) -> None:
        if keep:
            if self._cut:
                limit = self._extraction.limits.max_text
                self._extraction.gap("limit", self._name, f"more than {limit} characters of text")
            self._extraction.chars += self._written
        self._out.close(keep)

    def fork(self) -> _Counted:
        twin = _Counted(self._extraction, self._name, self._out.fork(), self._room)
        twin._written, twin._cut = self._written, self._cut
        return twin


def read_message(pieces: Iterable[bytes], out: Extraction) -> None:
    """Hand every readable text of one message (CRLF line endings, as SMTP delivers it,
    in pieces of any size) to `out`."""
    _Walker(out).message(Reader(pieces), "body", "", 0)


@dataclass(frozen=True)
class Extracted:
    texts: list[Text]
    gaps: list[Gap]


def extract(message: bytes, limits: Limits | None = None) -> Extracted:
    """Every readable text of a message in memory, each place's whole, and the gaps."""
    texts = _Texts()
    out = Extraction(limits or Limits(), texts)
    read_message(slices(message), out)
    return Extracted(texts.texts, out.gaps)


def slices(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    """`data` in pieces of `size` bytes."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


class _Walker:
    def __init__(self, out: Extraction) -> None:
        self.out = out

    def message(self, reader: Reader, where: Where, name: str, depth: int) -> None:
        """A whole message: its subject, then its content as one entity."""
        fields = rawmail.parse_fields(self.head(reader, name))
        subject = rawmail.get(fields, "Subject")
        if subject:
            self.out.add("subject" if where == "body" else where, name, subject)
        self.entity(fields, reader, where, name, depth)

    def head(self, reader: Reader, name: str) -> bytes:
        head, overlong = split_head(reader)
        if overlong:
            self.out.gap("limit", name, f"a header block of more than {HEAD_MAX} bytes")
        return head

    def entity(self, fields: list[rawmail.Field] | None, reader: Reader, where: Where,
               name: str, depth: int) -> None:
        """One entity; its header fields already read, or (None) still to be read."""
        out = self.out
        if depth > out.limits.max_depth:
            out.gap("limit", name, f"nested more than {out.limits.max_depth} levels deep")
            return
        if fields is None:
            fields = rawmail.parse_fields(self.head(reader, name))
        # Only the Content-* fields matter here; parsing the rest would cost for nothing.
        headers = parse_headers(b"".join(f.raw for f in fields
                                         if f.name.lower().startswith("content-")))
        ctype = headers.get_content_type()
        filename = _filename(headers)
        if filename or (where == "body" and _is_attachment(headers, ctype)):
            shown = mask_text(filename)
            name = f"{name}/{shown}" if name else shown
            where = "attachment"
            if filename:
                out.add("attachment", name, filename)  # a file name can hold a number too
        if ctype.startswith("multipart/"):
            boundary = headers.get_boundary()
            if not boundary:
                out.gap("unreadable", name, "a multipart part without a boundary")
                return
            parts = Parts(reader, boundary)
            while parts.next_part():
                if not out.take_part(name):
                    return
                self.entity(None, Reader(parts), where, name, depth + 1)
            return
        body = out.counted(reader, name)
        content = transfer_decoded(body, str(headers.get("content-transfer-encoding", "")))
        if ctype in _MESSAGE_TYPES or (_extension(filename) == "eml"
                                       and not ctype.startswith("text/")):
            self.message(Reader(content), "attachment", name, depth + 1)
        else:
            self.content(content, ctype, headers.get_content_charset(), filename, where, name,
                         depth, flowed=str(headers.get_param("format", "")).lower() == "flowed")
        for _ in body:  # what was not read (an image past its first bytes) counts too
            pass

    def content(self, pieces: Iterable[bytes], ctype: str, charset: str | None,
                filename: str, where: Where, name: str, depth: int,
                flowed: bool = False) -> None:
        """One decoded part or archive member, read by what it is."""
        out = self.out
        extension = _extension(filename)
        if ctype == "text/html" or (extension in ("htm", "html")
                                    and not ctype.startswith("text/")):
            self.text(pieces, charset, "html", where, name)
        elif ctype.startswith("text/") or ctype in _TEXT_TYPES or extension in _TEXT_EXTENSIONS:
            self.text(pieces, charset, "flowed" if flowed else "plain", where, name)
        else:
            first, rest = first_bytes(pieces, _SNIFF)
            if out.light and (documents.is_pdf(first) or documents.is_zip(first)):
                raise Heavy(f"{name or 'the message'} holds a document")
            if documents.is_pdf(first):
                with spilled(first, rest) as file:
                    self.pdf(file, where, name)
            elif documents.is_zip(first):
                with spilled(first, rest) as file:
                    self.archive(file, where, name, depth)
            elif documents.is_ole(first):
                if documents.ole_is_encrypted_ooxml(_chain(first, rest)):
                    out.gap("encrypted", name, "an encrypted Office document")
                else:
                    out.gap("unsupported", name, "a legacy Office file (.doc, .xls, .ppt, .msg)")
            elif ctype in _ENCRYPTED_TYPES:
                out.gap("encrypted", name, "encrypted content (S/MIME or PGP)")
            # Anything else (images, audio, video, ...) holds no text to read.

    def text(self, pieces: Iterable[bytes], charset: str | None, kind: Kind, where: Where,
             name: str) -> None:
        out = self.out
        part = TextPart(out.open(where, name), charset, kind)
        for piece in pieces:
            if kind == "html" and out.light:
                out.html_read += len(piece)
                if out.html_read > LIGHT_HTML:
                    raise Heavy(f"{name or 'the message'} holds more than {LIGHT_HTML} "
                                "bytes of HTML")
            part.feed(piece)
        part.close()

    def pdf(self, file: IO[bytes], where: Where, name: str) -> None:
        try:
            pages, cut = documents.pdf_text(file, self.out.limits.max_pdf_pages)
        except documents.Encrypted as e:
            self.out.gap("encrypted", name, str(e))
            return
        except documents.Unreadable as e:
            self.out.gap("unreadable", name, str(e))
            return
        if cut:
            self.out.gap("limit", name, f"more than {self.out.limits.max_pdf_pages} pages")
        self.joined(pages, where, name)

    def joined(self, texts: Iterable[str], where: Where, name: str) -> None:
        """Texts of one place (pages, document parts) as one, a line break between them."""
        text = self.out.open(where, name)
        for i, piece in enumerate(texts):
            text.write("\n" + piece if i else piece)
        text.close()

    def archive(self, file: IO[bytes], where: Where, name: str, depth: int) -> None:
        """OOXML and OpenDocument packages, or a ZIP archive whose members are read in turn."""
        out = self.out
        try:
            with zipfile.ZipFile(file) as archive:
                kind = documents.office_kind(archive)
                if kind:
                    self.package(archive, kind, where, name)
                    return
                for info in archive.infolist():
                    if info.is_dir():
                        continue
                    member = f"{name}/{mask_text(info.filename)}" if name else info.filename
                    if not out.take_part(name):
                        return
                    if info.flag_bits & 0x1:
                        out.gap("encrypted", name, "a password-protected ZIP archive")
                        continue
                    if not out.take_bytes(info.file_size, member):
                        return
                    out.add("attachment", member, info.filename)
                    # Read whole first: a damaged member (its CRC) fails before any of it
                    # is scanned.
                    with archive.open(info) as stream, spilled(b"", file_pieces(stream)) as data:
                        if depth + 1 > out.limits.max_depth:
                            out.gap("limit", name, f"nested more than {out.limits.max_depth} "
                                                   "levels deep")
                            return
                        if _extension(info.filename) == "eml":
                            self.message(Reader(file_pieces(data)), "attachment", member,
                                         depth + 1)
                        else:
                            self.content(file_pieces(data), "application/octet-stream", None,
                                         info.filename, "attachment", member, depth + 1)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError,
                EOFError, ValueError, zlib.error, RuntimeError) as e:
            # zlib.error: damaged deflated data; RuntimeError: zipfile's "encrypted, password
            # required" for one member of an Office package.
            out.gap("unreadable", name, f"the archive cannot be read: {e}")
        except documents.Encrypted as e:
            out.gap("encrypted", name, str(e))
        except documents.Unreadable as e:
            out.gap("unreadable", name, str(e))

    def package(self, archive: zipfile.ZipFile, kind: str, where: Where, name: str) -> None:
        parts = documents.ooxml_parts(archive) if kind == "ooxml" else documents.odf_parts(
            archive)
        read = documents.ooxml_text if kind == "ooxml" else documents.odf_text

        def texts() -> Iterator[str]:
            for info in parts:
                if not self.out.take_bytes(info.file_size, name):
                    return
                with archive.open(info) as stream:
                    if text := read(stream):
                        yield text

        self.joined(texts(), where, name)


class _Texts:
    """A Sink that keeps each place's text whole (for `extract`)."""

    def __init__(self) -> None:
        self.texts: list[Text] = []

    def open(self, where: Where, name: str) -> TextOut:
        return _Collected(self, where, name, [])


@dataclass
class _Collected:
    texts: _Texts
    where: Where
    name: str
    pieces: list[str]

    def write(self, text: str) -> None:
        self.pieces.append(text)

    def close(self, keep: bool = True) -> None:
        if keep and self.pieces:
            self.texts.texts.append(Text(self.where, self.name, "".join(self.pieces)))

    def fork(self) -> _Collected:
        return _Collected(self.texts, self.where, self.name, list(self.pieces))


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _filename(headers: Message) -> str:
    """The part's file name (Content-Disposition, else Content-Type name), decoded."""
    value = headers.get_filename() or ""  # RFC 2231 continuations and charsets decoded
    return rawmail.decode_words(value).strip()


def _is_attachment(headers: Message, ctype: str) -> bool:
    """A part the person attached, rather than the text they wrote."""
    disposition = str(headers.get("content-disposition", "")).split(";")[0].strip().lower()
    if disposition == "attachment":
        return True
    return not (ctype.startswith("multipart/") or ctype in ("text/plain", "text/html"))


def _extension(filename: str) -> str:
    return filename.rpartition(".")[2].lower() if "." in filename else ""
