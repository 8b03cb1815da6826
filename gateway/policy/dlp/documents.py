"""Read the text out of document attachments: PDF, OOXML (Word, Excel, PowerPoint), OpenDocument.

PDF goes through pypdf (a PDF with an owner password only opens with the empty user
password, as readers do). OOXML (ECMA-376) and OpenDocument (ISO/IEC 26300) are ZIP
archives of XML parts; every part that can carry text is read with defusedxml (no DTDs,
no entity expansion), so headers, footers, footnotes, comments, text boxes, tracked
deletions, speaker notes and shared strings are all seen. Text is joined per paragraph
and per cell: Word splits "010190-1234" over several runs (`<w:t>` elements) whenever
spelling checks, revisions or formatting touch it.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable, Iterator
from typing import IO

import pypdf
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

logging.getLogger("pypdf").setLevel(logging.ERROR)  # a damaged file is reported as a gap

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # Compound File: .doc/.xls/.ppt/.msg, or
_ENCRYPTED_OOXML = "EncryptedPackage".encode("utf-16-le")  # an encrypted OOXML document
ODF_MIMETYPE_PREFIX = b"application/vnd.oasis.opendocument."

# OOXML parts that never hold document text.
_OOXML_SKIP = ("styles", "theme", "fontTable", "settings", "webSettings", "numbering",
               "stylesWithEffects", "presProps", "viewProps", "tableStyles", "calcChain",
               "vbaData", "[Content_Types]")
_OOXML_TEXT = {"t", "delText"}  # w:t, a:t, x:t; w:delText is still in the file
_OOXML_BREAKS = {"p": "\n", "si": "\n", "c": "\t", "row": "\n", "tc": "\t", "tr": "\n",
                 "br": "\n", "cr": "\n", "tab": "\t"}
_ODF_PARAGRAPHS = {"p", "h"}
_ODF_TEXT_NS = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_MAX_SPACES = 100  # <text:s text:c="N"/>: N spaces, but never a memory bomb


class Encrypted(Exception):
    """The document is encrypted: its text cannot be read."""


class Unreadable(Exception):
    """The document is damaged or not what it claims to be."""


def is_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]


def is_zip(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04"


def is_ole(data: bytes) -> bool:
    return data[:8] == OLE_MAGIC


def ole_is_encrypted_ooxml(pieces: Iterable[bytes]) -> bool:
    """An encrypted .docx/.xlsx/.pptx is an OLE file holding an EncryptedPackage stream
    (searched as the file streams by: a name split between two pieces is still seen)."""
    tail = b""
    for piece in pieces:
        window = tail + piece
        if _ENCRYPTED_OOXML in window:
            return True
        tail = window[-(len(_ENCRYPTED_OOXML) - 1):]  # pieces may be shorter than the name
    return False


def pdf_text(file: IO[bytes], max_pages: int) -> tuple[list[str], bool]:
    """Each page's text, and whether pages were left out (past `max_pages`); pypdf reads
    the (seekable) file where it needs to, so the PDF need not be in memory."""
    try:
        reader = pypdf.PdfReader(file)
        if reader.is_encrypted and reader.decrypt("") == pypdf.PasswordType.NOT_DECRYPTED:
            raise Encrypted("the PDF needs a password")
        pages = []
        for number, page in enumerate(reader.pages):
            if number >= max_pages:
                return pages, True
            pages.append(page.extract_text())
        return pages, False
    except Encrypted:
        raise
    except Exception as e:  # pypdf raises many kinds on damaged files; none may stop a scan
        raise Unreadable(f"the PDF cannot be read: {e}") from None


def office_kind(archive: zipfile.ZipFile) -> str:
    """"ooxml", "odf" or "" (a plain ZIP archive)."""
    names = set(archive.namelist())
    if "[Content_Types].xml" in names:
        return "ooxml"
    if "mimetype" in names:
        with archive.open("mimetype") as f:
            if f.read(64).startswith(ODF_MIMETYPE_PREFIX):
                return "odf"
    return ""


def ooxml_parts(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The XML parts of an OOXML package that may carry text, in package order."""
    parts = []
    for info in archive.infolist():
        name = info.filename
        stem = name.rsplit("/", 1)[-1].removesuffix(".xml")
        if not name.endswith(".xml") or "/_rels/" in name or name.startswith("_rels/"):
            continue
        if stem in _OOXML_SKIP or "/theme/" in name:
            continue
        parts.append(info)
    return parts


def odf_parts(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """content.xml, styles.xml (headers and footers) and meta.xml (title, subject)."""
    if _odf_encrypted(archive):
        raise Encrypted("the OpenDocument file is encrypted")
    wanted = ("content.xml", "styles.xml", "meta.xml")
    return [info for info in archive.infolist() if info.filename in wanted]


def _odf_encrypted(archive: zipfile.ZipFile) -> bool:
    try:
        with archive.open("META-INF/manifest.xml") as f:
            return b"encryption-data" in f.read()
    except KeyError:
        return False


def ooxml_text(stream: IO[bytes]) -> str:
    """One OOXML part's text: runs joined per paragraph, cells separated by tabs."""
    out: list[str] = []
    cell_type: list[str] = []
    try:
        for event, elem in ElementTree.iterparse(stream, events=("start", "end")):
            tag = _local(elem.tag)
            if event == "start":
                if tag == "c":
                    cell_type.append(elem.get("t", "n"))
                continue
            if tag in _OOXML_TEXT and elem.text:
                out.append(elem.text)
            elif tag == "v" and cell_type and cell_type[-1] not in ("s", "e") and elem.text:
                out.append(elem.text)  # a number or formula result typed into a cell
            elif _is_core_property(elem.tag) and elem.text:
                out.append(elem.text + "\n")
            if tag in _OOXML_BREAKS:
                out.append(_OOXML_BREAKS[tag])
                if tag == "c" and cell_type:
                    cell_type.pop()
                if tag in ("p", "si", "row"):
                    elem.clear()
    except (ElementTree.ParseError, DefusedXmlException, RecursionError) as e:
        raise Unreadable(f"a part cannot be parsed: {e}") from None
    return "".join(out)


def _is_core_property(tag: str) -> bool:
    """dc:title, dc:subject, cp:keywords, dc:description of docProps/core.xml."""
    return tag.startswith("{http://purl.org/dc/elements/1.1/}") or tag.endswith("}keywords")


def odf_text(stream: IO[bytes]) -> str:
    """One OpenDocument part's text, one line per paragraph or heading."""
    out: list[str] = []
    try:
        for _, elem in ElementTree.iterparse(stream, events=("end",)):
            tag = _local(elem.tag)
            if tag in _ODF_PARAGRAPHS and elem.tag.startswith("{" + _ODF_TEXT_NS):
                out.append("".join(_odf_pieces(elem)) + "\n")
                elem.clear()
            elif elem.tag.startswith("{http://purl.org/dc/elements/1.1/}") and elem.text:
                out.append(elem.text + "\n")  # meta.xml: title, subject, description
    except (ElementTree.ParseError, DefusedXmlException, RecursionError) as e:
        raise Unreadable(f"a part cannot be parsed: {e}") from None
    return "".join(out)


def _odf_pieces(elem) -> Iterator[str]:
    """The text of a paragraph with its spans; text:s, text:tab and text:line-break kept."""
    tag = _local(elem.tag)
    if tag == "s":
        count = elem.get(f"{{{_ODF_TEXT_NS}}}c", "1")
        yield " " * min(int(count) if count.isdigit() else 1, _MAX_SPACES)
    elif tag == "tab":
        yield "\t"
    elif tag == "line-break":
        yield "\n"
    if elem.text:
        yield elem.text
    for child in elem:
        yield from _odf_pieces(child)
        if child.tail:
            yield child.tail


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]
