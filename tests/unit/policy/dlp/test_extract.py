"""Extraction and scanning on real files, made by the libraries people make them with."""

from __future__ import annotations

import io
import zipfile

import pytest

from gateway.policy.dlp.cpr import contains_cpr
from gateway.policy.dlp.extract import Limits, extract
from gateway.policy.dlp.scan import scan_message
from tests.support import documents as d

CPR = "010190-1230"  # hyphen: counts whatever its check digit
CPR_BARE = "0101104120"  # issued 2010, fails modulus-11: counts only after a keyword


def places(message: bytes, limits: Limits | None = None) -> list[tuple[str, str, str]]:
    return [(f.where, f.name, f.masked) for f in scan_message(message, limits).findings]


def texts(message: bytes) -> str:
    return "\n".join(t.text for t in extract(message).texts)


def gaps(message: bytes, limits: Limits | None = None) -> list[tuple[str, str]]:
    return [(g.reason, g.name) for g in extract(message, limits).gaps]


def test_subject_rfc2047_decoded():
    message = d.mail(subject="Bente Jensen f. " + CPR + " skinnebenssår")
    assert b"=?utf-8?" in message.partition(b"\r\n\r\n")[0]  # the subject went encoded
    assert places(message) == [("subject", "", "010190-XXXX")]


@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_body_transfer_decoded(cte: str):
    body = f"Kære Ole\n\nDin mor, CPR-nr. {CPR_BARE}, har skinnebenssår.\n"
    message = d.mail(body, cte=cte)
    if cte == "base64":
        assert CPR_BARE.encode() not in message
    assert places(message) == [("body", "", "010110-XXXX")]


def test_quoted_printable_soft_break_inside_the_number():
    message = (b"From: a@brondby.dk\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
               b"Bente 0101=\r\n90-1230 har s=C3=A5r\r\n")
    assert places(message) == [("body", "", "010190-XXXX")]


def test_format_flowed_lines_are_joined():
    message = (b"From: a@brondby.dk\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=utf-8; format=flowed\r\n\r\n"
               b"Bente Jensen, f. 010190 \r\n1238, har s\xc3\xa5r\r\n")
    assert places(message) == [("body", "", "010190-XXXX")]


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252"])
def test_legacy_charsets(charset: str):
    # "ø" glued to the number makes it part of a word: only right decoding tells.
    body = f"Bente (f. {CPR}) sår, plejehjem\nSøren bør{CPR}"
    message = d.mail(body, charset=charset, cte="quoted-printable")
    assert places(message) == [("body", "", "010190-XXXX")]
    dash = (b"Subject: x\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\n"
            + "–".encode("cp1252"))
    assert "–" in texts(dash)  # as browsers read it


def test_html_tags_removed_and_entities_decoded():
    html = ("<html><head><style>p{color:red}</style></head><body>"
            "<p>CPR:&nbsp;<span style='x'>0101</span><b>10</b>&#52;120</p>"
            "<p>tlf. 43&nbsp;96&nbsp;12&nbsp;34</p><script>var x='010190-1230';</script>"
            "</body></html>")
    message = d.mail("Se HTML-delen", html=html)
    assert "CPR:\u00a00101104120" in texts(message)
    assert places(message) == [("body", "", "010110-XXXX")]


def test_a_number_split_across_word_runs():
    document = d.docx_runs("Bente ", "0101", "90-", "1230", " har sår")
    assert b"010190-1230" not in document  # no run holds the whole number
    message = d.mail(attachments=[("notat.docx", d.DOCX_TYPE, document)])
    assert places(message) == [("attachment", "notat.docx", "010190-XXXX")]


def test_word_header_table_and_comment_are_read():
    document = d.docx_parts(header="Journal 220910-1230",
                            table=[["Navn", "CPR"], ["Bente", CPR_BARE]],
                            comment="Ole: 310190-1230")
    found = {f.masked for f in scan_message(
        d.mail(attachments=[("journal.docx", d.DOCX_TYPE, document)])).findings}
    assert found == {"220910-XXXX", "010110-XXXX", "310190-XXXX"}


def test_excel_strings_and_numbers_in_cells():
    workbook = d.xlsx([["Navn", "Personnummer", "Beløb"],
                       ["Bente", CPR_BARE, 1234567890],
                       ["Ole", 2209101230, "kr. 0101901238"]])
    found = [f.masked for f in scan_message(
        d.mail(attachments=[("liste.xlsx", d.XLSX_TYPE, workbook)])).findings]
    # a string cell after the keyword, a number cell passing modulus-11, and one in text
    assert sorted(found) == ["010110-XXXX", "010190-XXXX", "220910-XXXX"]


def test_powerpoint_slide_and_notes():
    deck = d.pptx_slide("Bente 010190-1230", notes="Ole 220910-1230")
    found = [f.masked for f in scan_message(
        d.mail(attachments=[("møde.pptx", d.PPTX_TYPE, deck)])).findings]
    assert found == ["010190-XXXX", "220910-XXXX"]


def test_opendocument_text_with_spans_and_spreadsheet():
    text = d.odt("Notat", ["Bente ", "0101", "90", "-1230"], ["cpr", " ", CPR_BARE])
    sheet = d.ods([["CPR", "Navn"], ["220910-1230", "Ole"]])
    message = d.mail(attachments=[("notat.odt", d.ODT_TYPE, text),
                                  ("liste.ods", d.ODS_TYPE, sheet)])
    assert places(message) == [("attachment", "notat.odt", "010190-XXXX"),
                               ("attachment", "notat.odt", "010110-XXXX"),
                               ("attachment", "liste.ods", "220910-XXXX")]


def test_pdf_text_and_pdf_with_only_an_owner_password():
    message = d.mail(attachments=[
        ("brev.pdf", d.PDF_TYPE, d.pdf("Vedr. Bente Jensen", "CPR-nr. " + CPR_BARE)),
        ("låst.pdf", "application/octet-stream", d.owner_only_pdf("Ole " + CPR))])
    assert places(message) == [("attachment", "brev.pdf", "010110-XXXX"),
                               ("attachment", "låst.pdf", "010190-XXXX")]


def test_csv_attachment_and_octet_stream_named_csv():
    csv = f"navn;cpr\r\nBente;{CPR_BARE}\r\n".encode("cp1252")
    message = d.mail(attachments=[("liste.csv", "text/csv", csv),
                                  ("kopi.csv", "application/octet-stream", csv)])
    assert places(message) == [("attachment", "liste.csv", "010110-XXXX"),
                               ("attachment", "kopi.csv", "010110-XXXX")]


def test_image_whose_base64_holds_ten_digits_is_no_finding():
    png = d.png_with_digits("+0101901238+")
    message = d.mail("Billede vedhæftet", attachments=[("foto.png", "image/png", png)])
    assert contains_cpr(message.decode())  # the raw base64 would count
    assert places(message) == [] and gaps(message) == []


def test_attached_message_is_scanned_recursively():
    inner = d.mail(f"Din mor, {CPR}, har sår", subject="Vedr. din mor",
                   attachments=[("bilag.pdf", d.PDF_TYPE, d.pdf("Ole 220910-1230"))])
    message = d.mail("Videresendt", subject="VS: Vedr. din mor",
                     attachments=[("mail.eml", "message/rfc822", inner)])
    assert places(message) == [("attachment", "mail.eml", "010190-XXXX"),
                               ("attachment", "mail.eml/bilag.pdf", "220910-XXXX")]


def test_zip_members_are_read_and_a_file_name_counts_too():
    archive = d.zip_of({"liste.csv": f"cpr;{CPR_BARE}".encode(),
                        f"journal {CPR}.txt": b"intet her"})
    message = d.mail(attachments=[("bilag.zip", "application/zip", archive)])
    assert places(message) == [("attachment", "bilag.zip/liste.csv", "010110-XXXX"),
                               ("attachment", "bilag.zip/journal 010190-XXXX.txt",
                                "010190-XXXX")]


def test_encrypted_files_are_gaps_not_findings():
    message = d.mail(attachments=[
        ("låst.zip", "application/zip", d.zip_of({"a.csv": CPR.encode()}, password="pw")),
        ("låst.pdf", d.PDF_TYPE, d.encrypted_pdf("Bente " + CPR)),
        ("gammel.doc", "application/msword", d.OLE_HEADER + b"\x00" * 512)])
    assert places(message) == []
    assert gaps(message) == [("encrypted", "låst.zip"), ("encrypted", "låst.pdf"),
                             ("unsupported", "gammel.doc")]


def test_a_damaged_pdf_is_a_gap_and_the_rest_is_still_scanned():
    message = d.mail(f"Bente {CPR}", attachments=[
        ("brev.pdf", d.PDF_TYPE, d.pdf("x")[:300])])
    assert places(message) == [("body", "", "010190-XXXX")]
    assert gaps(message) == [("unreadable", "brev.pdf")]


def damaged(archive: bytes, member: str) -> bytes:
    """`archive` with the deflated data of `member` overwritten: inflating it fails."""
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + 2
    return archive[:start] + b"\xff" * 40 + archive[start + 40:]


def test_damaged_archives_and_documents_are_gaps_and_the_rest_is_still_scanned():
    archive = damaged(d.zip_of({"liste.csv": f"cpr;{CPR}\n".encode() * 200}), "liste.csv")
    document = damaged(d.docx_runs("Bente " + CPR + " har sår " * 300), "word/document.xml")
    message = d.mail(f"Bente {CPR}", attachments=[
        ("bilag.zip", "application/zip", archive), ("notat.docx", d.DOCX_TYPE, document)])
    assert places(message) == [("body", "", "010190-XXXX")]
    assert gaps(message) == [("unreadable", "bilag.zip"), ("unreadable", "notat.docx")]


def test_limits_on_bytes_parts_and_pages():
    attachments = [(f"{i}.csv", "text/csv", b"x" * 1000) for i in range(5)]
    attachments.append(("sidst.csv", "text/csv", CPR.encode()))
    message = d.mail("Hej", attachments=attachments)
    assert places(message, Limits(max_parts=4)) == []
    assert gaps(message, Limits(max_parts=4)) == [("limit", "")]
    assert gaps(message, Limits(max_bytes=3000))[0][0] == "limit"
    assert places(message) == [("attachment", "sidst.csv", "010190-XXXX")]
    long_pdf = d.mail(attachments=[("lang.pdf", d.PDF_TYPE, d.pdf("side", pages=3))])
    assert gaps(long_pdf, Limits(max_pdf_pages=2)) == [("limit", "lang.pdf")]


def test_nesting_past_the_limit_is_a_gap():
    message = d.mail(f"Bente {CPR}")
    for level in range(4):
        message = d.mail("VS", attachments=[(f"{level}.eml", "message/rfc822", message)])
    assert places(message, Limits(max_depth=3)) == []
    assert gaps(message, Limits(max_depth=3))[0][0] == "limit"
    assert len(places(message)) == 1


def test_a_charset_that_is_no_text_encoding_is_read_as_undeclared_text():
    # Python knows "base64" as a codec, but not as a text encoding: once, the scan failed.
    message = (b"Subject: x\r\nContent-Type: text/plain; charset=base64\r\n\r\n"
               b"Bente 010190-1230 har s\xc3\xa5r\r\n")
    assert places(message) == [("body", "", "010190-XXXX")]
    assert "sår" in texts(message)
