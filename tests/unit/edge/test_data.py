"""The chunked DATA reader against the line-by-line rule of RFC 5321 (as aiosmtpd reads it).

A real asyncio.StreamReader is fed the bytes in arbitrary pieces, with a small buffer
limit so that chunks are cut everywhere; whatever the split, the reader must end where
the line reader ends, keep the same text, see the same flaws and leave what follows the
final dot unread.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.edge.data import LINE_LIMIT, DataChecks, read_data

_BAD = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")
AFTER = b"QUIT\r\n"


def by_lines(stream: bytes, size_limit: int | None = None) -> tuple[bytes, int, bool, bool]:
    """aiosmtpd's reading: lines to CRLF, a line "." ends, a leading dot goes.

    Returns the text, the bytes consumed, too big, and whether it holds a bare CR/LF or NUL.
    """
    pos, lines, raw_size = 0, [], 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        raw_size += len(line)
        lines.append(line[1:] if line.startswith(b".") else line)
    text = b"".join(lines)
    return text, pos, bool(size_limit and raw_size > size_limit), bool(_BAD.search(text))


async def chunked(stream: bytes, cuts: list[int], limit: int,
                  size_limit: int | None = None) -> tuple[bytes, DataChecks, bytes]:
    """Feed `stream` cut at `cuts` to a StreamReader; read DATA; return text, checks, rest."""
    reader = asyncio.StreamReader(limit=limit)
    kept: list[bytes] = []

    async def write(data: bytes) -> None:
        kept.append(data)

    async def feed() -> None:
        last = 0
        for cut in [*sorted(set(cuts)), len(stream)]:
            if cut > last:
                reader.feed_data(stream[last:cut])
                last = cut
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    try:  # a reader that misses the end waits for more: fail, do not hang
        checks = await asyncio.wait_for(read_data(reader, write, size_limit), 5)
    finally:
        await feeder
    return b"".join(kept), checks, await reader.read()


TOKENS = [b"a", b"xyz", b".", b"..", b"\r", b"\n", b"\r\n", b"\0", b"\n.\r\n", b"\r\n.",
          b".\r\n", b"\r\n..\r\n", b"\r\r\n", b"\n\n"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40),
       st.lists(st.integers(0, 400), max_size=12),
       st.sampled_from([4, 5, 7, 16, 1 << 16]),
       st.sampled_from([None, 3, 20, 60]))
async def test_any_split_reads_like_the_line_reader(tokens, cuts, limit, size_limit):
    stream = b"".join(tokens) + b"\r\n.\r\n" + AFTER
    text, consumed, too_big, flawed = by_lines(stream, size_limit)
    got, checks, rest = await chunked(stream, cuts, limit, size_limit)
    assert rest == stream[consumed:]
    assert checks.too_big == too_big
    if not too_big:
        assert got == text and checks.size == len(text)
        assert (checks.nul or checks.bare_line_ending) == flawed
        assert checks.nul == (b"\0" in text)


@pytest.mark.parametrize("stream,text", [
    (b".\r\n", b""),  # empty: the final dot right after DATA's CRLF
    (b"\r\n.\r\n", b"\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"a\r\n...b\r\n.\r\n", b"a\r\n..b\r\n"),
    (b"a\r\n.\r\n.\r\n", b"a\r\n"),  # what follows the end is the next command
])
async def test_end_and_dot_unstuffing(stream, text):
    for limit in (4, 1 << 16):
        got, checks, rest = await chunked(stream + AFTER, list(range(len(stream))), limit)
        assert got == text and not checks.refused
        assert rest == (stream + AFTER)[by_lines(stream + AFTER)[1]:]


@pytest.mark.parametrize("stream", [
    b"line\n.\nMAIL FROM:<evil@x.dk>\r\n.\r\n",  # bare LF around a dot: not the end
    b"line\r.\rMAIL FROM:<evil@x.dk>\r\n.\r\n",
    b"foo\n.\r\nRCPT TO:<evil@x.dk>\r\n.\r\n",
])
async def test_smuggled_ends_are_text_and_flawed(stream):
    got, checks, rest = await chunked(stream + AFTER, [5, 6, 7], 16)
    assert checks.bare_line_ending and rest == AFTER
    assert b"evil" in got


async def test_size_limit_drops_the_text_and_reads_to_the_end():
    stream = b"x" * 98 + b"\r\n"
    got, checks, rest = await chunked(stream * 50 + b".\r\n" + AFTER, [], 1 << 16, 1000)
    assert checks.too_big and checks.refused and rest == AFTER
    assert len(got) <= 1000
    _, checks, _ = await chunked(stream * 10 + b".\r\n", [], 1 << 16, 1000)
    assert not checks.too_big  # exactly the limit


@pytest.mark.parametrize("length,too_long", [(LINE_LIMIT - 2, False), (LINE_LIMIT - 1, True),
                                             (5000, True)])
async def test_line_length_across_chunks(length, too_long):
    stream = b"a\r\n" + b"y" * length + b"\r\nb\r\n.\r\n"
    for cuts in ([], [3, 500, 999, 1000, 1001, 1002]):
        _, checks, rest = await chunked(stream + AFTER, cuts, 64)
        assert checks.too_long == too_long and rest == AFTER


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2100), st.sampled_from([b"\r\n", b"\n", b"\r"])),
                max_size=8),
       st.lists(st.integers(0, 9000), max_size=12),
       st.sampled_from([64, 1000, 1 << 16]))
async def test_any_split_finds_the_lines_too_long(lines, cuts, limit):
    """Line lengths as a line-by-line reader counts them: raw octets to each LF, +1."""
    body = b"".join(b"y" * length + end for length, end in lines) + b"\r\n"
    longest = max(len(line) + 1 for line in body.split(b"\n")[:-1])
    _, checks, rest = await chunked(body + b".\r\n" + AFTER, cuts, limit)
    assert checks.too_long == (longest > LINE_LIMIT) and rest == AFTER
