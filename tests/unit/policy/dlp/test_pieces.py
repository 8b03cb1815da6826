"""The scan reads a message in pieces: however it is split, it finds what the whole finds.

Each step is held against what it does to a whole text or body (the detector against
`find_cpr_numbers`, the splitter against `mime.part_spans`, the decoders against
`binascii` and `bytes.decode`), and the whole scan in pieces against the scan in one.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import quopri

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.policy.dlp.cpr import CprStream, find_cpr_numbers
from gateway.policy.dlp.pieces import Parts, Reader, split_head, transfer_decoded
from gateway.policy.dlp.scan import scan_message, scan_pieces
from gateway.policy.dlp.text import TextPart
from gateway.transform.mime import part_spans, split_entity
from tests.support import documents as d

NUMBERS = ["010190-1230", "0101104120", "010190 1238", "0101901238", "3112991234",
           "010190\u20131230", "6101901234"]
WORDS = ["cpr", "CPR-nr.", "personnummer", "Personnummer:", "ø", "æble", "x", "_", "-", " ",
         "\u00a0", "\r\n", "\n", " \r\n", "&nbsp;", "<b>", "</p>", "<script>", "</script>",
         "&#52;", "&amp;", "=", "é"]
pieces_of_text = st.lists(st.sampled_from(NUMBERS + WORDS) | st.text("0123456789- x", max_size=12),
                          max_size=40).map("".join)


def split(data, cuts: list[int]) -> list:
    """`data` cut at the given positions (any, in any order)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@given(pieces_of_text, cuts)
def test_the_detector_in_pieces_finds_what_the_whole_text_holds(text: str, at: list[int]):
    stream = CprStream()
    found = [m for piece in split(text, at) for m in stream.feed(piece)] + stream.close()
    assert found == list(find_cpr_numbers(text))


@pytest.mark.parametrize("text", [
    "CPR-nr." + "x" * 35 + " 0101104120 og mere",  # no hyphen, fails modulus-11
    "personnummer" + "." * 40 + "0101104120",  # the keyword as far back as it may be
    "Cpr" + "." * 40 + "0101104120:",
])
def test_a_number_split_anywhere_is_found_once_with_its_keyword_far_behind(text: str):
    for at in range(len(text) + 1):
        stream = CprStream()
        found = stream.feed(text[:at]) + stream.feed(text[at:]) + stream.close()
        assert [(m.digits, m.reason) for m in found] == [("0101104120", "keyword")]
    further = text.replace("0101104120", ".0101104120")  # one character further: too far
    assert not list(find_cpr_numbers(further))


def reference_transfer_decode(body: bytes, encoding: str) -> bytes:
    """How the whole body was decoded before the scan read it in pieces."""
    if encoding == "base64":
        try:
            return base64.b64decode(body)
        except (binascii.Error, ValueError):
            alphabet = bytes(c for c in body if c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklm"
                                                    b"nopqrstuvwxyz0123456789+/")
            return base64.b64decode(alphabet[:len(alphabet) // 4 * 4])
    return binascii.a2b_qp(body)


@st.composite
def encoded(draw) -> tuple[str, bytes]:
    """A body as a mailer encodes it, or damaged: any bytes at all."""
    encoding = draw(st.sampled_from(["base64", "quoted-printable"]))
    if draw(st.booleans()):
        return encoding, draw(st.binary(max_size=300))
    raw = draw(st.binary(max_size=300))
    if encoding == "base64":
        return encoding, base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return encoding, quopri.encodestring(raw).replace(b"\n", b"\r\n")


mangled_base64 = st.lists(st.sampled_from([b"QUJD", b"QQ", b"QUI", b"=", b"==", b"\r\n", b"*",
                                           b"QUJDRA==", b"Zm9v"]), max_size=30).map(b"".join)


@given(encoded(), cuts)
def test_transfer_decoding_in_pieces_is_the_whole_bodys(case: tuple[str, bytes], at: list[int]):
    encoding, body = case
    assert b"".join(transfer_decoded(split(body, at), encoding)) == reference_transfer_decode(
        body, encoding)


@given(mangled_base64, cuts)
def test_damaged_base64_in_pieces_as_binascii_reads_it(body: bytes, at: list[int]):
    assert b"".join(transfer_decoded(split(body, at), "base64")) == reference_transfer_decode(
        body, "base64")


boundary = "b=_1"
body_pieces = st.lists(st.sampled_from([
    b"--b=_1\r\n", b"--b=_1--\r\n", b"--b=_1 \t\r\n", b"--b=_1x\r\n", b" --b=_1\r\n", b"\r\n",
    b"text", b"--b=_", b"-", b"\r", b"--b=_1", b"--b=_1--"]), max_size=25).map(b"".join)


@given(body_pieces, cuts)
def test_body_parts_in_pieces_are_the_whole_bodys(body: bytes, at: list[int]):
    parts = Parts(Reader(split(body, at)), boundary)
    found = []
    while parts.next_part():
        found.append(b"".join(parts))
    assert found == [body[a:b] for a, b in part_spans(body, boundary)]


@given(st.lists(st.sampled_from([b"Subject: x\r\n", b"\r\n", b"a", b"\r", b"\n", b" y\r\n"]),
                max_size=12).map(b"".join), cuts)
def test_the_header_block_in_pieces_is_the_whole_entitys(entity: bytes, at: list[int]):
    reader = Reader(split(entity, at))
    head, overlong = split_head(reader)
    assert (head, b"".join(reader)) == split_entity(entity) and not overlong


def reference_text(data: bytes, charset: str | None) -> str:
    """How a whole text part was decoded before the scan read it in pieces."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                      (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(name, "replace")
    if charset:
        name = codecs.lookup(charset).name
        return data.decode("cp1252" if name in ("latin_1", "iso8859-1", "ascii") else name,
                           "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


class Collect:
    def __init__(self, kept: list[str] | None = None, text: str = "") -> None:
        self.kept = [] if kept is None else kept
        self.text = text

    def write(self, text: str) -> None:
        self.text += text

    def close(self, keep: bool = True) -> None:
        if keep:
            self.kept.append(self.text)

    def fork(self) -> Collect:
        return Collect(self.kept, self.text)


texts = st.text(alphabet=st.sampled_from("abc 0123-\r\nøæ€–\u00a0\ufeff"), max_size=60)
charsets = st.sampled_from([None, "utf-8", "iso-8859-1", "us-ascii", "windows-1252",
                            "utf-16", "shift_jis", "koi8-r"])


@given(texts, charsets, st.sampled_from(["utf-8", "cp1252", "utf-16", "utf-8-sig"]), cuts,
       st.binary(max_size=4))
def test_a_text_part_in_pieces_is_decoded_as_the_whole(text: str, charset: str | None,
                                                      written_as: str, at: list[int],
                                                      junk: bytes):
    data = text.encode(written_as, "replace") + junk
    out = Collect()
    part = TextPart(out, charset, "plain")
    for piece in split(data, at):
        part.feed(piece)
    part.close()
    assert out.kept == [reference_text(data, charset)]


@given(st.lists(st.sampled_from(NUMBERS + WORDS + ["<p>", "<!--", "-->", "<a href='x'>", "&",
                                                    "&#", "0;", "<style>", "</style>", "<"]),
                max_size=40).map("".join),
       charsets, st.sampled_from(["html", "flowed"]), cuts)
def test_html_and_flowed_text_in_pieces_is_the_wholes(text: str, charset: str | None, kind,
                                                      at: list[int]):
    data = text.encode(charset or "utf-8", "replace")
    whole, pieces = Collect(), Collect()
    part = TextPart(whole, charset, kind)
    part.feed(data)
    part.close()
    part = TextPart(pieces, charset, kind)
    for piece in split(data, at):
        part.feed(piece)
    part.close()
    assert pieces.kept == whole.kept


def test_a_flowed_line_break_split_anywhere_still_joins_the_number():
    data = "Bente f. 010190 \r\n1238, har sår".encode()
    for at in range(len(data) + 1):
        out = Collect()
        part = TextPart(out, "utf-8", "flowed")
        part.feed(data[:at])
        part.feed(data[at:])
        part.close()
        assert out.kept == ["Bente f. 010190 1238, har sår"]


@st.composite
def messages(draw) -> bytes:
    """Mail as Outlook writes it, or as hand-made mail may come: nested parts, any transfer
    encoding, declared, undeclared and wrong charsets, HTML, flowed text, attached mail."""

    def part(depth: int) -> bytes:
        kind = draw(st.sampled_from(["text", "html", "flowed", "csv", "eml", "multipart"]
                                    if depth < 2 else ["text", "html", "flowed", "csv"]))
        if kind == "multipart":
            inner = [part(depth + 1) for _ in range(draw(st.integers(0, 3)))]
            return (b"Content-Type: multipart/mixed; boundary=\"=_b%d\"\r\n\r\npreamble\r\n" % depth
                    + b"".join(b"--=_b%d\r\n" % depth + p + b"\r\n" for p in inner)
                    + (b"--=_b%d--\r\n" % depth if draw(st.booleans()) else b""))
        if kind == "eml":
            return (b"Content-Type: message/rfc822\r\n\r\nSubject: " + draw(words).encode()
                    + b"\r\n" + part(depth + 1))
        text = draw(words)
        charset = draw(st.sampled_from([None, "utf-8", "iso-8859-1", "utf-16"]))
        data = text.encode(draw(st.sampled_from(["utf-8", "cp1252"])), "replace")
        cte = draw(st.sampled_from(["", "base64", "quoted-printable"]))
        if cte == "base64":
            data = base64.encodebytes(data).replace(b"\n", b"\r\n")
        elif cte == "quoted-printable":
            data = quopri.encodestring(data).replace(b"\n", b"\r\n")
        ctype = {"text": "text/plain", "html": "text/html", "flowed": "text/plain",
                 "csv": "text/csv"}[kind]
        params = (f"; charset={charset}" if charset else "") + (
            "; format=flowed" if kind == "flowed" else "")
        head = f"Content-Type: {ctype}{params}\r\n"
        if kind == "csv":
            head += 'Content-Disposition: attachment; filename="liste.csv"\r\n'
        if cte:
            head += f"Content-Transfer-Encoding: {cte}\r\n"
        return head.encode() + b"\r\n" + data

    words = st.lists(st.sampled_from(NUMBERS + WORDS), max_size=30).map("".join)
    return b"From: a@brondby.dk\r\nSubject: " + draw(words).encode() + b"\r\n" + part(0)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=4))
def test_a_message_scanned_in_pieces_gives_what_the_whole_gives(message: bytes,
                                                                sizes: list[int]):
    whole = scan_message(message)
    pieces, i = [], 0
    while i < len(message):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(message[i:i + size])
        i += size
    scanned = scan_pieces(pieces)
    assert (scanned.findings, scanned.gaps) == (whole.findings, whole.gaps)


def test_outlooks_mail_scanned_in_small_pieces_finds_every_number_once():
    message = d.mail("Bente 010190-1230 og CPR-nr. 0101104120", html="<p>010190-1230</p>",
                     cte="quoted-printable",
                     attachments=[("a.eml", "message/rfc822", d.mail("Ole 220910-1230")),
                                  ("brev.pdf", d.PDF_TYPE, d.pdf("Ole 220910-1230"))])
    found = [(f.where, f.name, f.masked) for f in scan_pieces(split(message, list(
        range(0, len(message), 7)))).findings]
    assert found == [("body", "", "010190-XXXX"), ("body", "", "010110-XXXX"),
                     ("attachment", "a.eml", "220910-XXXX"),
                     ("attachment", "brev.pdf", "220910-XXXX")]
