"""The text a person could read in a message, part by part, as the DLP scan sees it.

The subject is RFC 2047-decoded. Each MIME part (RFC 2045, 2046) is transfer-decoded
(base64, quoted-printable) and charset-decoded (iso-8859-1 and us-ascii read as
windows-1252, as WHATWG does; undeclared text as UTF-8, else windows-1252); HTML loses its
tags and its entities are decoded. Attachments are read by what they are, not only by
what they are called: text types (CSV too), PDF, OOXML, OpenDocument, ZIP archives and
attached messages (message/rfc822), recursively. The raw transfer encoding is never
scanned, so an image's base64 that happens to hold ten digits is never a finding.

The work is bounded by `Limits`. What could not be read in full (an encrypted PDF or ZIP,
a damaged file, a limit reached) is recorded as a `Gap`; the rest is still scanned.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import io
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser
from typing import Literal

from gateway import rawmail
from gateway.policy.dlp import documents
from gateway.policy.dlp.cpr import mask_text
from gateway.transform.mime import parse_headers, part_spans, split_entity

Where = Literal["subject", "body", "attachment"]
GapReason = Literal["encrypted", "unreadable", "unsupported", "limit"]

MiB = 1024 * 1024

_TEXT_TYPES = {"application/json", "application/xml", "application/csv", "application/x-csv",
               "application/vnd.ms-excel.csv"}  # besides text/*
_TEXT_EXTENSIONS = {"txt", "csv", "tsv", "json", "xml", "md", "log", "ics", "vcf", "htm", "html"}
_MESSAGE_TYPES = {"message/rfc822", "message/global"}
_ENCRYPTED_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime",
                    "application/pgp-encrypted"}
_WINDOWS_1252_ALIASES = {"latin_1", "iso8859-1", "ascii"}  # codec names after lookup
_NOT_BASE64 = bytes(set(range(256)) - set(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"))
# RFC 3676: a line ending in a space continues on the next; "010190 \r\n1234" is one number.
_FLOWED_BREAK = re.compile(r" \r?\n")
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


@dataclass(frozen=True)
class Limits:
    """How much one scan may read; past a limit the rest is left out and a Gap says so."""

    max_bytes: int = 100 * MiB  # decoded content of parts and archive members, in all
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


@dataclass
class Extraction:
    """What one message yielded: its texts, and its gaps."""

    limits: Limits
    texts: list[Text] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    bytes_read: int = 0
    parts: int = 0
    chars: int = 0

    def gap(self, reason: GapReason, name: str, detail: str) -> None:
        if not any(g.reason == reason and g.name == name for g in self.gaps):
            self.gaps.append(Gap(reason, name, detail))

    def add(self, where: Where, name: str, text: str) -> None:
        room = self.limits.max_text - self.chars
        if len(text) > room:
            self.gap("limit", name, f"more than {self.limits.max_text} characters of text")
            text = text[:max(room, 0)]
        if text:
            self.chars += len(text)
            self.texts.append(Text(where, name, text))

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
            self.gap("limit", name, f"more than {self.limits.max_bytes} bytes of content")
            return False
        self.bytes_read += size
        return True


def extract(message: bytes, limits: Limits | None = None) -> Extraction:
    """Every readable text of one message (CRLF line endings, as SMTP delivers it)."""
    out = Extraction(limits or Limits())
    _Walker(out).message(message, "body", "", 0)
    return out


class _Walker:
    def __init__(self, out: Extraction) -> None:
        self.out = out

    def message(self, data: bytes, where: Where, name: str, depth: int) -> None:
        """A whole message: its subject, then its content as one entity."""
        head, _ = split_entity(data)
        subject = rawmail.get(rawmail.parse_fields(head), "Subject")
        if subject:
            self.out.add("subject" if where == "body" else where, name, subject)
        self.entity(data, where, name, depth)

    def entity(self, data: bytes, where: Where, name: str, depth: int) -> None:
        out = self.out
        if depth > out.limits.max_depth:
            out.gap("limit", name, f"nested more than {out.limits.max_depth} levels deep")
            return
        head, body = split_entity(data)
        # Only the Content-* fields matter here; parsing the rest would cost for nothing.
        headers = parse_headers(b"".join(f.raw for f in rawmail.parse_fields(head)
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
            for start, end in part_spans(body, boundary):
                if not out.take_part(name):
                    return
                self.entity(body[start:end], where, name, depth + 1)
            return
        if not out.take_bytes(len(body), name):
            return
        content = _transfer_decode(body, str(headers.get("content-transfer-encoding", "")))
        if ctype in _MESSAGE_TYPES or (_extension(filename) == "eml"
                                       and not ctype.startswith("text/")):
            self.message(content, "attachment", name, depth + 1)
        else:
            self.content(content, ctype, headers.get_content_charset(), filename, where, name,
                         depth, flowed=str(headers.get_param("format", "")).lower() == "flowed")

    def content(self, data: bytes, ctype: str, charset: str | None, filename: str,
                where: Where, name: str, depth: int, flowed: bool = False) -> None:
        """One decoded part or archive member, read by what it is."""
        out = self.out
        extension = _extension(filename)
        if ctype == "text/html" or (extension in ("htm", "html")
                                    and not ctype.startswith("text/")):
            out.add(where, name, html_text(decode_text(data, charset)))
        elif ctype.startswith("text/") or ctype in _TEXT_TYPES or extension in _TEXT_EXTENSIONS:
            text = decode_text(data, charset)
            out.add(where, name, _FLOWED_BREAK.sub(" ", text) if flowed else text)
        elif documents.is_pdf(data):
            self.pdf(data, where, name)
        elif documents.is_zip(data):
            self.archive(data, where, name, depth)
        elif documents.is_ole(data):
            if documents.ole_is_encrypted_ooxml(data):
                out.gap("encrypted", name, "an encrypted Office document")
            else:
                out.gap("unsupported", name, "a legacy Office file (.doc, .xls, .ppt, .msg)")
        elif ctype in _ENCRYPTED_TYPES:
            out.gap("encrypted", name, "encrypted content (S/MIME or PGP)")
        # Anything else (images, audio, video, ...) holds no text to read.

    def pdf(self, data: bytes, where: Where, name: str) -> None:
        try:
            pages, cut = documents.pdf_text(data, self.out.limits.max_pdf_pages)
        except documents.Encrypted as e:
            self.out.gap("encrypted", name, str(e))
            return
        except documents.Unreadable as e:
            self.out.gap("unreadable", name, str(e))
            return
        if cut:
            self.out.gap("limit", name, f"more than {self.out.limits.max_pdf_pages} pages")
        self.out.add(where, name, "\n".join(pages))

    def archive(self, data: bytes, where: Where, name: str, depth: int) -> None:
        """OOXML and OpenDocument packages, or a ZIP archive whose members are read in turn."""
        out = self.out
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
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
                    member_data = archive.read(info)
                    if depth + 1 > out.limits.max_depth:
                        out.gap("limit", name, f"nested more than {out.limits.max_depth} "
                                               "levels deep")
                        return
                    if _extension(info.filename) == "eml":
                        self.message(member_data, "attachment", member, depth + 1)
                    else:
                        self.content(member_data, "application/octet-stream", None,
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
        texts = []
        for info in parts:
            if not self.out.take_bytes(info.file_size, name):
                break
            with archive.open(info) as stream:
                texts.append(read(stream))
        self.out.add(where, name, "\n".join(t for t in texts if t))


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


def _transfer_decode(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    try:
        if encoding == "base64":
            return base64.b64decode(body)  # not validated: line breaks and junk are skipped
        if encoding == "quoted-printable":
            return binascii.a2b_qp(body)
    except (binascii.Error, ValueError):
        return base64.b64decode(_base64_prefix(body))
    return body


def _base64_prefix(body: bytes) -> bytes:
    """The decodable part of a damaged base64 body: its alphabet, cut to whole quanta."""
    alphabet = body.translate(None, _NOT_BASE64)
    return alphabet[: len(alphabet) // 4 * 4]


def decode_text(data: bytes, charset: str | None) -> str:
    """Bytes of a text part as text: its charset, else UTF-8, else windows-1252."""
    for bom, codec_name in _BOMS:
        if data.startswith(bom):
            return data.decode(codec_name, "replace")
    if charset:
        try:
            codec_name = codecs.lookup(charset).name
        except LookupError:
            codec_name = ""
        if codec_name in _WINDOWS_1252_ALIASES:
            codec_name = "cp1252"
        if codec_name:
            return data.decode(codec_name, "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def html_text(html: str) -> str:
    """What a reader of the HTML sees: tags removed, entities decoded, blocks on own lines."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return "".join(parser.out)


class _HtmlText(HTMLParser):
    # Inline tags (span, b, a, font, ...) join their text with no space: Word's HTML
    # wraps parts of one number in different spans.
    _BLOCKS = {"p", "div", "br", "tr", "td", "th", "li", "ul", "ol", "table", "h1", "h2",
               "h3", "h4", "h5", "h6", "blockquote", "pre", "hr", "title", "dt", "dd"}
    _HIDDEN = {"script", "style"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag in self._BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self._BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.out.append(data)
