"""A labelled DLP corpus: mails with CPR numbers in every form and place, and mails full of
numbers that look like them but are not (phones, dates, CVR, EAN, IBAN, amounts, ...).

Each item is (label, message bytes, the masked numbers that must be found). The numbers
are built from today's date rules by hand, so every expected finding is checked against
the contract's rule, not against the detector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tests.support import documents as d

# Numbers that count, each with the contract's reason.
HYPHEN = "220910-1230"  # 22 Sep 1910, mod-11 fails: counts for the hyphen
SPACED_MOD11 = "010190 1238"  # mod-11 passes
BARE_MOD11 = "2902004125"  # 29 Feb 2000 (7th digit 4, YY 00), mod-11 passes
KEYWORD = "CPR-nr. 0101104120"  # 2010, mod-11 fails: counts for the keyword
SUBSTITUTE = "610190-1230"  # day 61: a substitute number for 1 Jan 1990
ENDASH = "150387\u20131234"  # Word's en dash in place of the hyphen
POSITIVES = {HYPHEN: "220910-XXXX", SPACED_MOD11: "010190-XXXX", BARE_MOD11: "290200-XXXX",
             KEYWORD: "010110-XXXX", SUBSTITUTE: "610190-XXXX", ENDASH: "150387-XXXX"}

# Text a care worker writes that holds numbers, none of them a CPR number.
LOOKALIKES = [
    "Ring på tlf. 43 96 12 34 eller mobil +45 22 33 44 55, evt. 4396123400.",
    "Mødet er 01-01-2025 kl. 10.30; næste gang 2025-02-03T09:00:00+01:00 eller 03.02.25.",
    "Faktura til CVR-nr. 12345678 (DK12345678), EAN 5790000123456, P-nr. 1012345678.",
    "Betal til IBAN DK50 0040 0440 1162 43 / DK5000400440116243, reg. 1234 konto 0123456789.",
    "Beløbet er 1.234.567,89 kr., i alt 1 234 567 890 kr.; kr. 1234567890 i 2025.",
    "Sag 2025-001234, journalnr. 24/012345, ordre 9999991234 og bolig 127.",
    "Borgerens nr. er 0101104120 (internt løbenummer, ikke et personnummer).",  # no keyword
    "Datoen 290200-0120 findes ikke: 1900 var ikke et skudår; 310290-1230 heller ikke.",
    "Varenummer ABC0101901238, serie 0101901238X og 12010190-1230.",
    "Født 010150-5120? Nej, det er 2050 og endnu ikke sket.",
]


def _subject(text: str) -> bytes:
    return d.mail("Hej", subject=f"Vedr. Bente Jensen {text}")


def _plain(text: str) -> bytes:
    return d.mail(f"Kære Ole\n\nDin mor, Bente Jensen, {text}, har skinnebenssår.\n",
                  cte="quoted-printable")


def _base64(text: str) -> bytes:
    return d.mail(f"Din mor, Bente Jensen, {text}, har skinnebenssår.", cte="base64")


def _latin1(text: str) -> bytes:
    return d.mail(f"Din mor, Bente Jensen, {text}, har skinnebenssår.",
                  charset="windows-1252", cte="quoted-printable")


def _html(text: str) -> bytes:
    half = len(text) // 2
    html = (f"<html><body><p>Din mor, <b>Bente</b> Jensen,&nbsp;<span>{text[:half]}</span>"
            f"<span>{text[half:]}</span>, har skinnebenss&aring;r.</p></body></html>")
    return d.mail("Se HTML-udgaven.", html=html)


def _pdf(text: str) -> bytes:
    letter = d.pdf("Kære Ole", f"Din mor, Bente Jensen, {text}, har sår.".replace("\u2013", "-"))
    return d.mail("Se brev", attachments=[("brev.pdf", d.PDF_TYPE, letter)])


def _docx(text: str) -> bytes:
    runs = ["Din mor, ", text[:4], text[4:7], text[7:], ", har sår."]
    return d.mail("Se notat", attachments=[("notat.docx", d.DOCX_TYPE, d.docx_runs(*runs))])


def _xlsx(text: str) -> bytes:
    sheet = d.xlsx([["Navn", "Bemærkning"], ["Bente Jensen", text]])
    return d.mail("Se liste", attachments=[("liste.xlsx", d.XLSX_TYPE, sheet)])


def _pptx(text: str) -> bytes:
    deck = d.pptx_slide("Borgermøde", notes=f"Bente Jensen, {text}")
    return d.mail("Se slides", attachments=[("møde.pptx", d.PPTX_TYPE, deck)])


def _odt(text: str) -> bytes:
    document = d.odt("Notat", ["Bente Jensen, ", text[:6], text[6:]])
    return d.mail("Se notat", attachments=[("notat.odt", d.ODT_TYPE, document)])


def _ods(text: str) -> bytes:
    sheet = d.ods([["Navn", "Bemærkning"], ["Bente Jensen", text]])
    return d.mail("Se liste", attachments=[("liste.ods", d.ODS_TYPE, sheet)])


def _csv(text: str) -> bytes:
    csv = f"navn;bemærkning\r\nBente Jensen;{text}\r\n".encode("cp1252", "replace")
    return d.mail("Se liste", attachments=[("liste.csv", "text/csv", csv)])


def _zip(text: str) -> bytes:
    archive = d.zip_of({"liste.txt": f"Bente Jensen, {text}".encode()})
    return d.mail("Se bilag", attachments=[("bilag.zip", "application/zip", archive)])


def _forwarded(text: str) -> bytes:
    inner = d.mail(f"Din mor, {text}, har sår.", subject="Vedr. din mor")
    return d.mail("Videresendt", attachments=[("Vedr. din mor.eml", "message/rfc822", inner)])


PLACES: dict[str, Callable[[str], bytes]] = {
    "subject": _subject, "text/plain qp": _plain, "text/plain base64": _base64,
    "windows-1252": _latin1, "html": _html, "pdf": _pdf, "docx runs": _docx, "xlsx": _xlsx,
    "pptx notes": _pptx, "odt spans": _odt, "ods": _ods, "csv": _csv, "zip": _zip,
    "message/rfc822": _forwarded,
}
# What each place cannot carry: PDF's Helvetica has no en dash (fpdf2 would refuse it).
_CANNOT = {("pdf", ENDASH)}


def corpus() -> Iterator[tuple[str, bytes, set[str]]]:
    """(label, message, masked numbers expected) for every form in every place, then the
    lookalikes in every place, then an image whose base64 holds a number."""
    for place, make in PLACES.items():
        for written, masked in POSITIVES.items():
            if (place, written) in _CANNOT:
                continue
            yield f"{place}: {written}", make(written), {masked}
        for text in LOOKALIKES:
            yield f"{place}: lookalike {text[:30]}", make(text), set()
    image = d.png_with_digits("+0101901238+")
    yield "image base64", d.mail("Foto", attachments=[("foto.png", "image/png", image)]), set()
