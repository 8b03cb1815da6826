"""The text of one text part as its bytes stream by: charset, format=flowed, HTML.

A part's bytes are decoded by its charset (iso-8859-1 and us-ascii read as windows-1252,
as WHATWG does; a byte order mark wins); undeclared (or unknown) text is UTF-8 if all of
it is, else windows-1252, as when the whole part is decoded at once: the two readings run
side by side from the first non-ASCII byte on, and the one that holds is kept. Format
flowed (RFC 3676) joins a line ending in a space with the next, so "010190 \\r\\n1234" is
one number; HTML (html.parser, fed as it arrives) loses its tags and its entities are
decoded. Only the text of the current piece, and what a piece boundary cut off (a split
character, a tag, a flowed line end), is held.
"""

from __future__ import annotations

import codecs
import copy
import re
import sys
from html.parser import HTMLParser
from typing import Literal, Protocol

Kind = Literal["plain", "flowed", "html"]

_WINDOWS_1252_ALIASES = {"latin_1", "iso8859-1", "ascii"}  # codec names after lookup
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))
# Without a byte order mark a whole UTF-16 or UTF-32 text is read in the machine's order
# (the incremental decoders refuse it instead).
_NATIVE = {name: f"{name}-{sys.byteorder[0]}e" for name in ("utf-16", "utf-32")}
_BOM_MAX = len(codecs.BOM_UTF32)
_FLOWED_BREAK = re.compile(r" \r?\n")


class TextOut(Protocol):
    """Where the text of one place goes, piece by piece."""

    def write(self, text: str) -> None: ...

    def close(self, keep: bool = True) -> None:
        """The text ended; with keep=False it is withdrawn (a reading that did not hold)."""

    def fork(self) -> TextOut:
        """A second reading of the same place from here on, with the text so far."""


class TextPart:
    """A text part: its bytes in (`feed`, then `close`), its text out."""

    def __init__(self, out: TextOut, charset: str | None, kind: Kind) -> None:
        self._out = out
        self._charset = charset
        self._kind = kind
        self._start: bytes | None = b""  # the first bytes, until a byte order mark is told
        self._utf8: _Reading | None = None  # undeclared: the UTF-8 reading while it holds
        self._other: _Reading | None = None  # the declared reading, or windows-1252

    def feed(self, data: bytes) -> None:
        if self._start is not None:
            data = self._start + data
            if len(data) < _BOM_MAX:
                self._start = data
                return
            self._begin(data)
        self._fork_if(data)
        self._decode(data, final=False)

    def close(self) -> None:
        data = self._start or b""
        if self._start is not None:
            self._begin(data)
            self._fork_if(data)
        self._decode(data, final=True)
        if self._utf8 is not None:
            self._utf8.close(keep=True)
            if self._other is not None:
                self._other.close(keep=False)
        elif self._other is not None:
            self._other.close(keep=True)

    def _begin(self, data: bytes) -> None:
        """Choose the reading by the first bytes (a byte order mark) and the charset."""
        self._start = None
        by_bom = next((codec for bom, codec in _BOMS if data.startswith(bom)), "")
        name = by_bom or _codec(self._charset)
        if not by_bom and name in _NATIVE and not data.startswith(codecs.BOM_UTF32_BE):
            name = _NATIVE[name]
        transform = _Transform(self._kind, self._out)
        if name:
            self._other = _Reading(codecs.getincrementaldecoder(name)("replace"), transform)
        else:
            self._utf8 = _Reading(codecs.getincrementaldecoder("utf-8")("strict"), transform)

    def _fork_if(self, data: bytes) -> None:
        """Undeclared text read as UTF-8 so far: from its first non-ASCII byte on, read it
        as windows-1252 too (up to here the two readings are the same text)."""
        if self._utf8 is not None and self._other is None and not data.isascii():
            self._other = self._utf8.fork(codecs.getincrementaldecoder("cp1252")("replace"))

    def _decode(self, data: bytes, final: bool) -> None:
        if self._utf8 is not None:
            try:
                self._utf8.feed(data, final)
            except UnicodeDecodeError:  # not UTF-8 after all: windows-1252 it is
                self._utf8.close(keep=False)
                self._utf8 = None
        if self._other is not None:
            self._other.feed(data, final)


def _codec(charset: str | None) -> str:
    """The text codec a declared charset names, or "" for none or an unknown one."""
    if not charset:
        return ""
    try:
        name = codecs.lookup(charset).name
        "".encode(name)  # a codec that is no text encoding (base64, rot13) raises here
    except (LookupError, ValueError):
        return ""
    return "cp1252" if name in _WINDOWS_1252_ALIASES else name


class _Reading:
    """One decoding of a part's bytes, and what is made of its text."""

    def __init__(self, decoder: codecs.IncrementalDecoder, transform: _Transform) -> None:
        self._decoder = decoder
        self._transform = transform

    def feed(self, data: bytes, final: bool) -> None:
        if text := self._decoder.decode(data, final):
            self._transform.text(text)

    def close(self, keep: bool) -> None:
        self._transform.close(keep)

    def fork(self, decoder: codecs.IncrementalDecoder) -> _Reading:
        return _Reading(decoder, self._transform.fork())


class _Transform:
    """Text as the reader sees it: as it is, flowed lines joined, or HTML's text."""

    def __init__(self, kind: Kind, out: TextOut) -> None:
        self._kind = kind
        self._out = out
        self._held = ""  # flowed: a trailing " " or " \r" that may start a line break
        self._html = _HtmlText() if kind == "html" else None

    def text(self, text: str) -> None:
        if self._html is not None:
            self._html.feed(text)
            self._drain()
        elif self._kind == "flowed":
            text = self._held + text if self._held else text
            held = 2 if text.endswith(" \r") else 1 if text.endswith(" ") else 0
            self._held = text[len(text) - held:] if held else ""
            self._out.write(_FLOWED_BREAK.sub(" ", text[:len(text) - held]))
        else:
            self._out.write(text)

    def close(self, keep: bool) -> None:
        if keep:
            if self._html is not None:
                self._html.close()
                self._drain()
            elif self._held:
                self._out.write(self._held)
        self._out.close(keep)

    def fork(self) -> _Transform:
        twin = copy.copy(self)
        twin._out = self._out.fork()
        if self._html is not None:
            twin._html = copy.copy(self._html)  # its state is immutable values, out drained
            twin._html.out = []
        return twin

    def _drain(self) -> None:
        assert self._html is not None
        if self._html.out:
            self._out.write("".join(self._html.out))
            self._html.out.clear()


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
