"""A large spooled message: its header block in memory, its body read from the file in pieces."""

from __future__ import annotations

from pathlib import Path

from gateway.model import Envelope, RecipientState
from gateway.spool.body import HEAD_MAX, Spooled, pieces, whole
from gateway.spool.store import STREAM_AT, Spool
from tests.support.spooled import open_spooled

HEAD = b"From: a@brondby.test\r\nBcc: skjult@brondby.test\r\nSubject: stor\r\n\r\n"
BODY = b"".join(b"linje %d med \xe6\r\n" % i for i in range(200_000))


async def collect(data) -> bytes:
    return b"".join([p async for p in pieces(data, size=65536)])


async def test_a_large_message_keeps_its_body_in_the_file(tmp_path: Path):
    path = tmp_path / "m.eml"
    path.write_bytes(HEAD + BODY)
    spooled = open_spooled(path)
    assert isinstance(spooled, Spooled)
    assert spooled.head == HEAD and len(spooled) == len(HEAD + BODY)
    assert not spooled.isascii()
    assert await collect(spooled) == HEAD + BODY
    assert await whole(spooled) == HEAD + BODY
    other = spooled.with_head(b"Subject: stor\r\n\r\n")
    assert len(other) == len(BODY) + len(b"Subject: stor\r\n\r\n")
    assert await collect(other) == b"Subject: stor\r\n\r\n" + BODY


def test_ascii_is_that_of_head_and_body(tmp_path: Path):
    path = tmp_path / "m.eml"
    path.write_bytes(b"Subject: \xe6\r\n\r\nplain\r\n")
    spooled = open_spooled(path)
    assert spooled is not None and not spooled.isascii()
    assert spooled.with_head(b"Subject: a\r\n\r\n").isascii()


def test_a_header_block_without_end_is_not_streamed(tmp_path: Path):
    path = tmp_path / "m.eml"
    path.write_bytes(b"X-Long: " + b"a" * HEAD_MAX + b"\r\n")
    assert open_spooled(path) is None


async def test_the_spool_streams_large_messages_only(tmp_path: Path):
    assert len(HEAD + BODY) > STREAM_AT
    spool = Spool(tmp_path)
    spool.prepare()
    for queue_id, data in (("small", HEAD + b"kort\r\n"), ("large", HEAD + BODY)):
        await spool.put(Envelope(id=queue_id, sender="a@brondby.test",
                                 recipients=[RecipientState("b@partner.test")], received=0), data)
    assert await spool.message("small") == HEAD + b"kort\r\n"
    fresh = Spool(tmp_path)  # nothing cached: read from disk
    assert await fresh.message("small") == HEAD + b"kort\r\n"
    large = await fresh.message("large")
    assert isinstance(large, Spooled) and await collect(large) == HEAD + BODY
