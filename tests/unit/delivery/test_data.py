"""The DATA writer: any split of a message gives the DATA text of the whole, sent for real."""

from __future__ import annotations

import aiosmtplib
import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.delivery.data import DotStuffer, send_data
from tests.support.sink import SmtpSink

OK = 250
REFUSED = 554


def whole_message(message: bytes) -> bytes:
    """aiosmtplib's DATA text of a message given in one piece (RFC 5321 4.5.2)."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


def stuffed(pieces: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join([stuffer.feed(p) for p in pieces] + [stuffer.end()])


def split(message: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(message)) for c in cuts})
    return [message[a:b] for a, b in zip([0, *points], [*points, len(message)], strict=True)]


# Messages made of what matters here: dots, CR, LF and text, in any order.
messages = st.lists(st.sampled_from([b".", b"..", b"\r", b"\n", b"\r\n", b"a", b"\xe6", b" "]),
                    max_size=60).map(b"".join)


@settings(max_examples=500, deadline=None)
@given(messages, st.lists(st.integers(min_value=0, max_value=120), max_size=12))
def test_any_split_gives_the_data_text_of_the_whole(message, cuts):
    assert stuffed(split(message, cuts)) == whole_message(message)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_one_byte_at_a_time_gives_the_data_text_of_the_whole(message):
    assert stuffed([message[i:i + 1] for i in range(len(message))]) == whole_message(message)


@pytest.mark.parametrize(("pieces", "text"), [
    ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n.\r\n"),  # a line's dot right after a split
    ([b"a\r", b"\n.b"], b"a\r\n..b\r\n.\r\n"),  # a CRLF split in two
    ([b"a", b".b"], b"a.b\r\n.\r\n"),  # a dot inside a line, after a split
    ([b"a\r"], b"a\r\n.\r\n"),  # a CR at the very end
    ([b"a\rb\nc"], b"a\r\nb\r\nc\r\n.\r\n"),  # bare CR and LF are never sent
    ([], b"\r\n.\r\n"),
    ([b".", b"\r\n"], b"..\r\n.\r\n"),
    ([b"a\r\nb\r\n.c\r\n"], b"a\r\nb\r\n..c\r\n.\r\n"),  # CRLF only, a dot deep inside
    ([b"a\r\nb\nc\r\n"], b"a\r\nb\r\nc\r\n.\r\n"),  # one bare LF among CRLFs
    ([b"a\r\nb\rc\r\n"], b"a\r\nb\r\nc\r\n.\r\n"),  # one bare CR among CRLFs
    ([b"a\r\n\n\rb\r\n"], b"a\r\n\r\n\r\nb\r\n.\r\n"),  # LF then CR: as many of each
])
def test_boundaries(pieces, text):
    assert stuffed(pieces) == text


async def chunks(*pieces: bytes):
    for piece in pieces:
        yield piece


async def test_a_message_sent_in_pieces_arrives_as_it_was():
    body = b"".join(b".line %d\r\n" % i for i in range(200_000))  # about 2.5 MB
    message = b"From: a@brondby.test\r\nSubject: stor\r\n\r\n" + body
    async with SmtpSink() as sink:
        client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=10)
        await client.connect()
        await client.ehlo()
        await client.mail("a@brondby.test")
        await client.rcpt("b@partner.test")
        response = await send_data(client, chunks(*split(message, [7, 40, 1 << 20, 2 << 20])),
                                   wait=10)
        await client.quit()
        [received] = await sink.wait_for(1)
    assert response.code == OK
    assert received.content == message


async def test_a_refused_message_raises_the_servers_reply():
    async with SmtpSink(data_reply="554 5.6.0 content refused") as sink:
        client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=10)
        await client.connect()
        await client.ehlo()
        await client.mail("a@brondby.test")
        await client.rcpt("b@partner.test")
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send_data(client, chunks(b"Subject: x\r\n\r\nx\r\n"), wait=10)
        await client.quit()
    assert refused.value.code == REFUSED
