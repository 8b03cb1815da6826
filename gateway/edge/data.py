"""The SMTP DATA reader: the message text as it arrives, in chunks, never line by line.

RFC 5321 4.1.1.4: the data ends at CRLF "." CRLF and nowhere else, the first CRLF being
that of the DATA command when the message is empty; a line starting with a dot had one
added by the client (4.5.2) and loses it here. What arrives is checked as it passes: the
size against SIZE (RFC 1870: past it, the rest is read and dropped, and the reply is 552),
the length of every line (4.5.3.1.6: aiosmtpd's 1001 octets with CRLF, then 500), bare CR
or LF and NUL (2.3.8, 4.5.2: SMTP smuggling; the handler refuses them). Each unstuffed
chunk goes to the writer as soon as it has been checked, so a large message streams into
the spool instead of being held.

The reader reads whole chunks with `readuntil(b"\\n.\\r\\n")`: a match preceded by CR is the
end; one preceded by anything else is a bare LF and reading goes on. A chunk the stream
limit cuts off never holds the start of a match (asyncio keeps the last bytes), so the
only matches that can straddle what was read are at the start of a line right after a
match or the DATA command: there the first bytes are looked at one by one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

LINE_LIMIT = 1001  # octets of one line with its CRLF: aiosmtpd's line_length_limit
_MATCH = b"\n.\r\n"
_DOT_LINE = b"\r\n."
_DOT_LINE_SEARCH = re.compile(re.escape(_DOT_LINE)).search  # sre finds it faster than `in`


@dataclass
class DataChecks:
    """What the reader saw in the raw (still dot-stuffed) data, and its unstuffed size."""

    size_limit: int | None = None
    raw_size: int = 0  # as SIZE counts it, dots and CRLFs included
    size: int = 0  # of the message text as kept
    too_big: bool = False
    too_long: bool = False
    nul: bool = False
    _cr: int = 0
    _lf: int = 0
    _crlf: int = 0
    _line: int = 0  # length of the line in progress, without its end
    _last2: bytes = b"\r\n"  # the raw bytes before: DATA's CRLF at first
    _counted: bytes = b""  # the last raw byte counted (none before the data)

    @property
    def bare_line_ending(self) -> bool:
        """Whether a CR was not followed by LF, or an LF not preceded by CR."""
        return not self._cr == self._lf == self._crlf

    @property
    def refused(self) -> bool:
        """Whether nothing of it may be kept (too big or a line too long)."""
        return self.too_big or self.too_long

    def take(self, raw: bytes) -> bytes:
        """Check one raw chunk; the message text in it ("" once the message is refused)."""
        self.raw_size += len(raw)
        before, self._last2 = self._last2, (self._last2 + raw[-2:])[-2:]
        if not raw or self.refused:
            return b""
        if self.size_limit and self.raw_size > self.size_limit:
            self.too_big = True
            return b""
        self._check_lines(raw)
        if b"\0" in raw:
            self.nul = True
        self._cr += raw.count(b"\r")
        self._lf += raw.count(b"\n")
        self._crlf += raw.count(b"\r\n") + (self._counted == b"\r" and raw[:1] == b"\n")
        self._counted = raw[-1:]
        if b"." in raw[:2] or _DOT_LINE_SEARCH(raw):  # dot-stuffed lines, maybe across chunks
            raw = (before + raw).replace(_DOT_LINE, b"\r\n")[2:]
        self.size += len(raw)
        return b"" if self.too_long else raw

    def _check_lines(self, raw: bytes) -> None:
        """Every line at most LINE_LIMIT octets with its CRLF, across chunks too.

        Not line by line: from the end of each line it looks for the last LF within the
        next LINE_LIMIT octets, so a 5 KB chunk costs a few searches in C, not a split.
        """
        end = len(raw)
        prev = -1 - self._line  # just before the line in progress began
        while True:
            stop = prev + 1 + LINE_LIMIT  # that line's LF must come before this
            if stop > end:  # what is left is shorter than a line may be
                last = raw.rfind(b"\n", max(prev + 1, 0))
                self._line = end - (prev if last < 0 else last) - 1
                return
            last = raw.rfind(b"\n", max(prev + 1, 0), stop)
            if last < 0:
                self.too_long = True
                return
            prev = last


Write = Callable[[bytes], Awaitable[None]]


async def read_data(reader: asyncio.StreamReader, write: Write,
                    size_limit: int | None) -> DataChecks:
    """Read DATA's text to its final dot, handing each checked chunk to `write`."""
    checks = DataChecks(size_limit)
    at_line_start = True  # right after a CRLF that a final dot line may follow
    while True:
        if at_line_start:
            raw = await reader.readexactly(1)
            if raw == b".":
                raw += await reader.readexactly(2)
                if raw == b".\r\n":
                    return checks
            at_line_start = False
        else:
            try:
                raw = await reader.readuntil(_MATCH)
            except asyncio.LimitOverrunError as e:
                raw = await reader.read(e.consumed)
            else:
                before = raw[-5:-4] or checks._last2[-1:]
                if before == b"\r":  # CRLF . CRLF: the end; the last line keeps its CRLF
                    text = checks.take(raw[:-3])
                    if text:
                        await write(text)
                    return checks
                at_line_start = True  # a bare LF, then a dot line: not the end
        text = checks.take(raw)
        if text:
            await write(text)
