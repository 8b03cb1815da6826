"""Real attachments, made with the libraries people make them with, and mails carrying them.

PDF with fpdf2 (and pypdf to encrypt one), Word with python-docx, Excel with openpyxl,
PowerPoint with python-pptx, OpenDocument with odfpy, ZIP archives with zipfile and the
`zip` program (for a password), messages with the standard email package.
"""

from __future__ import annotations

import base64
import email
import io
import struct
import subprocess
import tempfile
import zipfile
import zlib
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import docx
import openpyxl
import pptx
import pypdf
from fpdf import FPDF
from odf.opendocument import OpenDocumentSpreadsheet, OpenDocumentText
from odf.table import Table, TableCell, TableRow
from odf.text import P, S, Span

PDF_TYPE = "application/pdf"
DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX_TYPE = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ODT_TYPE = "application/vnd.oasis.opendocument.text"
ODS_TYPE = "application/vnd.oasis.opendocument.spreadsheet"


def pdf(*lines: str, pages: int = 1) -> bytes:
    """A PDF with the lines on each of `pages` pages (Helvetica: Latin-1 text)."""
    doc = FPDF()
    doc.set_font("Helvetica", size=11)
    for _ in range(pages):
        doc.add_page()
        for line in lines:
            doc.cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(doc.output())


def encrypted_pdf(*lines: str, user_password: str = "hemmelig") -> bytes:
    reader = pypdf.PdfReader(io.BytesIO(pdf(*lines)))
    writer = pypdf.PdfWriter(clone_from=reader)
    writer.encrypt(user_password=user_password, owner_password="ejer", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def owner_only_pdf(*lines: str) -> bytes:
    """Encrypted with an empty user password: every reader opens it without asking."""
    return encrypted_pdf(*lines, user_password="")


def docx_runs(*runs: str, paragraph_before: str = "Notat") -> bytes:
    """A Word document whose second paragraph is made of these runs (e.g. a number split
    as Word splits it when spelling or formatting touches part of it)."""
    document = docx.Document()
    document.add_paragraph(paragraph_before)
    paragraph = document.add_paragraph()
    for i, text in enumerate(runs):
        run = paragraph.add_run(text)
        run.bold = i % 2 == 1
    return _save(document)


def docx_parts(body: str = "", header: str = "", table: list[list[str]] | None = None,
               comment: str = "") -> bytes:
    """A Word document with text in the body, the page header, a table and a comment."""
    document = docx.Document()
    paragraph = document.add_paragraph(body or "Referat")
    if header:
        document.sections[0].header.paragraphs[0].text = header
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    if comment:
        document.add_comment(paragraph.runs, text=comment, author="Lene Larsen")
    return _save(document)


def _save(document) -> bytes:
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def xlsx(rows: list[list[object]]) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def pptx_slide(title: str, notes: str = "") -> bytes:
    presentation = pptx.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])
    slide.shapes.title.text = title
    if notes:
        slide.notes_slide.notes_text_frame.text = notes
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def odt(*paragraphs: str | list[str]) -> bytes:
    """An OpenDocument text; a list is one paragraph of spans, "" items becoming text:s."""
    document = OpenDocumentText()
    for item in paragraphs:
        paragraph = P()
        if isinstance(item, str):
            paragraph.addText(item)
        else:
            for piece in item:
                paragraph.addElement(S() if piece == " " else Span(text=piece))
        document.text.addElement(paragraph)
    return _odf_bytes(document)


def ods(rows: list[list[str]]) -> bytes:
    document = OpenDocumentSpreadsheet()
    table = Table(name="Ark1")
    for row in rows:
        table_row = TableRow()
        for value in row:
            cell = TableCell(valuetype="string")
            cell.addElement(P(text=value))
            table_row.addElement(cell)
        table.addElement(table_row)
    document.spreadsheet.addElement(table)
    return _odf_bytes(document)


def _odf_bytes(document) -> bytes:
    out = io.BytesIO()
    document.write(out)
    return out.getvalue()


def zip_of(files: dict[str, bytes], password: str = "") -> bytes:
    """A ZIP archive; with a password it is made by the `zip` program (ZipCrypto)."""
    if not password:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return out.getvalue()
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        subprocess.run(["zip", "-q", "-P", password, "archive.zip", *files], cwd=tmp,
                       check=True)
        return (Path(tmp) / "archive.zip").read_bytes()


def png_with_digits(digits: str = "+0101901238+") -> bytes:
    """A real PNG whose base64 text holds `digits` (a CPR number between '+' signs, both
    base64 characters that are not letters or digits): scanned raw, it would count."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    keyword = b"Comment\x00"
    offset = len(head) + 8 + len(keyword)
    pad = b"x" * (-offset % 57)  # start a 76-character base64 line (57 bytes each)
    payload = base64.b64decode(digits)
    png = (head + chunk(b"tEXt", keyword + pad + payload)
           + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))
    assert digits in base64.encodebytes(png).decode().replace("\n", "")
    return png


def mail(body: str = "Hej", subject: str = "Vedr. din mor", *,
         sender: str = "lela@brondby.dk", to: str = "hm@hotmail.dk",
         attachments: list[tuple[str, str, bytes]] = (), html: str = "",
         charset: str = "utf-8", cte: str = "") -> bytes:
    """A mail as Outlook would send it: text (and HTML) body, attachments (name, type, data)."""
    message = EmailMessage()
    message["From"] = f"Lene Larsen <{sender}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = "<dlp-test@brondby.dk>"
    message.set_content(body, charset=charset, cte=cte or None)
    if html:
        message.add_alternative(html, subtype="html")
    for name, ctype, data in attachments:
        if ctype == "message/rfc822":
            attached = email.message_from_bytes(data, policy=SMTP)
            message.add_attachment(attached, filename=name)
            continue
        main, _, sub = ctype.partition("/")
        message.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return message.as_bytes(policy=SMTP)


OLE_HEADER = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # the first bytes of every .doc/.xls/.ppt
