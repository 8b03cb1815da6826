"""A message's bytes as the DLP scan reads them: piece by piece, never whole.

An entity's header block is split from its body (RFC 5322 2.1), a multipart body into
its body parts (RFC 2046 5.1.1, as `transform.mime.part_spans` finds them in a whole
body), and a part's body is transfer-decoded (RFC 2045 6.7, 6.8: quoted-printable and
base64, exactly as `binascii` decodes the whole body, damaged input included) while it
streams. What must be read whole (a PDF, a ZIP archive) is spilled to an anonymous
temporary file past `SPILL_AT` bytes, so no piece of a message is held in memory twice
and a large one not at all.
"""

from __future__ import annotations

import binascii
import re
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

CHUNK = 1 << 20  # bytes read at a time
HEAD_MAX = 1 << 20  # a header block is not read past this
SPILL_AT = 1 << 20  # content to be read whole is held in memory up to this, then on disk
CRLF = b"\r\n"
_PADDING = re.compile(rb"[ \t]*")  # transport padding after a boundary (RFC 2046 5.1.1)
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64_OR_PAD = bytes(set(range(256)) - set(_BASE64_ALPHABET + b"="))


class Reader:
    """An entity's bytes, pulled a piece at a time; what was read too far can be put back."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._back = b""

    def read(self) -> bytes:
        """The next piece; b"" at the end."""
        if self._back:
            piece, self._back = self._back, b""
            return piece
        for piece in self._pieces:
            if piece:
                return piece
        return b""

    def unread(self, piece: bytes) -> None:
        self._back = piece + self._back if self._back else piece

    def __iter__(self) -> Iterator[bytes]:
        while piece := self.read():
            yield piece


def split_head(reader: Reader) -> tuple[bytes, bool]:
    """The header block (each field ending in CRLF, or empty), as `mime.split_entity` finds
    it; the reader is left at the body. True with the first HEAD_MAX bytes of a header
    block that ends later (or never), and the body left empty."""
    head = b""
    while piece := reader.read():
        searched = max(0, len(head) - 3)
        head = head + piece if head else piece
        if head.startswith(CRLF):
            reader.unread(head[2:])
            return b"", False
        end = head.find(CRLF + CRLF, searched)
        if end >= 0:
            reader.unread(head[end + 4:])
            return head[:end + 2], False
        if len(head) > HEAD_MAX:
            for _ in reader:  # past the limit: the rest is header block too, never body
                pass
            return head[:HEAD_MAX], True
    return head, False


class Parts:
    """The body parts of a multipart body as it streams: `next_part`, then `read` it.

    The CRLF before a delimiter belongs to the delimiter; a delimiter is the boundary at
    the start of a line, then `--` for the close delimiter, transport padding and the end
    of the line; a missing close delimiter (truncated mail) lets the last part run to
    the end. Bytes are handed out as soon as no delimiter can begin in them.
    """

    def __init__(self, reader: Reader, boundary: str) -> None:
        self._reader = reader
        self._marker = b"--" + boundary.encode("ascii", "surrogateescape")
        self._buf = b""
        self._at_body_start = True  # _buf[0] is the body's first byte
        self._eof = False
        self._scan = 0  # in _buf: where the search for a delimiter goes on
        self._begin: int | None = None  # in _buf: the unread start of the current part
        self._next = False  # a delimiter was found: another part follows
        self._closed = False  # the close delimiter was found, or the body ended

    def next_part(self) -> bool:
        """Skip what is left of the current part (or the preamble); False when none follows."""
        while self._begin is not None:
            self.read()
        while not self._next and not self._closed:  # the preamble
            found = self._delimiter()
            if found:
                self._end(*found)
            elif found is None and self._eof:
                self._closed = True
            else:
                self._pull(keep=len(self._buf))
        if not self._next:
            return False
        self._next, self._begin = False, self._scan
        return True

    def read(self) -> bytes:
        """The next bytes of the current part; b"" at its end."""
        while self._begin is not None:
            begin = self._begin
            found = self._delimiter()
            if found:
                start, stop, close = found
                data = self._buf[begin:start - 2] if start - 2 > begin else b""
                self._begin = None
                self._end(start, stop, close)
                return data
            if found is None and self._eof:
                data, self._begin, self._closed = self._buf[begin:], None, True
                return data
            # No delimiter can begin before `safe`: hand that out, then read on.
            safe = (len(self._buf) - len(self._marker) - 1 if found is None
                    else self._scan - 2)
            if safe > begin:
                self._begin = safe
                return self._buf[begin:safe]
            self._pull(keep=begin)
        return b""

    def __iter__(self) -> Iterator[bytes]:
        """The current part's bytes."""
        while piece := self.read():
            yield piece

    def _end(self, start: int, stop: int, close: bool) -> None:
        if close:
            self._closed = True
        else:
            self._next = True
            self._scan = min(stop + 2, len(self._buf))

    def _delimiter(self) -> tuple[int, int, bool] | None | bool:
        """(start, end, close) of the next delimiter in _buf; None when there is none;
        False when one may start at `_scan` but more bytes are needed to tell."""
        buf, marker, eof = self._buf, self._marker, self._eof
        while (found := buf.find(marker, self._scan)) >= 0:
            stop = found + len(marker)
            if stop + 2 > len(buf) and not eof:
                self._scan = found
                return False
            close = buf.startswith(b"--", stop)
            if close:
                stop += 2
            stop = _PADDING.match(buf, stop).end()  # transport padding (always matches)
            if stop + 2 > len(buf) and not eof:
                self._scan = found
                return False
            at_line_start = (found == 0 and self._at_body_start) or (
                found >= 2 and buf.startswith(CRLF, found - 2))
            if at_line_start and (stop == len(buf) or buf.startswith(CRLF, stop)):
                self._scan = found
                return found, stop, close
            self._scan = found + 1  # the boundary text inside a line is no delimiter
        self._scan = max(self._scan, len(buf) - len(marker) + 1)
        return None

    def _pull(self, keep: int) -> None:
        """Read the next piece, dropping what lies before `keep` (and before the two
        bytes in front of the search position, which tell a line start)."""
        keep = max(0, min(keep, self._scan - 2))
        piece = self._reader.read()
        if not piece:
            self._eof = True
            return
        if keep:
            self._at_body_start = False
        self._buf = self._buf[keep:] + piece
        self._scan -= keep
        if self._begin is not None:
            self._begin -= keep


def transfer_decoded(pieces: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """The body's bytes with its Content-Transfer-Encoding undone, as they stream."""
    encoding = encoding.strip().lower()
    decoder: _Base64 | _QuotedPrintable
    if encoding == "base64":
        decoder = _Base64()
    elif encoding == "quoted-printable":
        decoder = _QuotedPrintable()
    else:
        yield from pieces
        return
    for piece in pieces:
        if decoded := decoder.feed(piece):
            yield decoded
    if decoded := decoder.close():
        yield decoded


class _Base64:
    """`base64.b64decode` of the whole body (not validated), a piece at a time.

    As binascii decodes without validation, a character outside the alphabet is skipped,
    a pad ends the data once it completes a quantum (the rest is ignored), and a pad that
    does not is skipped; data left over at the end that is not a whole quantum (binascii
    raises; the extractor then decodes the whole quanta) is dropped.
    """

    def __init__(self) -> None:
        self._quantum = b""  # alphabet characters of the unfinished quantum
        self._pad = False  # one pad after two characters of a quantum: a second ends it
        self._done = False

    def feed(self, piece: bytes) -> bytes:
        if self._done:
            return b""
        data, out = piece.translate(None, _NOT_BASE64_OR_PAD), []
        while data:
            pad = data.find(b"=")
            chars, data = (data, b"") if pad < 0 else (data[:pad], data[pad + 1:])
            if chars:
                self._pad = False
                chars = self._quantum + chars
                whole = len(chars) // 4 * 4
                out.append(binascii.a2b_base64(chars[:whole]))
                self._quantum = chars[whole:]
            if pad < 0:
                break
            if len(self._quantum) == 3 or (len(self._quantum) == 2 and self._pad):
                out.append(binascii.a2b_base64(self._quantum + b"=="[:4 - len(self._quantum)]))
                self._done = True
                break
            self._pad = len(self._quantum) == 2
        return b"".join(out)

    def close(self) -> bytes:
        return b""


class _QuotedPrintable:
    """`binascii.a2b_qp` of the whole body, a line at a time: no encoded character or soft
    line break reaches past a line's end (a line longer than CHUNK is cut before a `=`)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, piece: bytes) -> bytes:
        data = self._rest + piece if self._rest else piece
        cut = data.rfind(b"\n") + 1
        if not cut and len(data) > CHUNK:
            pad = data.rfind(b"=", len(data) - 2)
            cut = pad if pad >= 0 else len(data)
        self._rest = data[cut:]
        return binascii.a2b_qp(data[:cut]) if cut else b""

    def close(self) -> bytes:
        rest, self._rest = self._rest, b""
        return binascii.a2b_qp(rest) if rest else b""


def first_bytes(pieces: Iterable[bytes], size: int) -> tuple[bytes, Iterator[bytes]]:
    """At least the first `size` bytes (fewer only if that is all), and the rest."""
    rest = iter(pieces)
    first = b""
    while len(first) < size:
        piece = next(rest, None)
        if piece is None:
            break
        first += piece
    return first, rest


def spilled(first: bytes, rest: Iterable[bytes]) -> IO[bytes]:
    """The content in a file, positioned at its start: in memory up to SPILL_AT bytes,
    past that an anonymous temporary file (gone when closed, or when the process dies)."""
    file = tempfile.SpooledTemporaryFile(max_size=SPILL_AT)  # noqa: SIM115 (closed by caller)
    file.write(first)
    for piece in rest:
        file.write(piece)
    file.seek(0)
    return file  # type: ignore[return-value]


def file_pieces(file: IO[bytes]) -> Iterator[bytes]:
    while piece := file.read(CHUNK):
        yield piece
