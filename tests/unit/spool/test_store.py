"""The spool keeps what it accepted: durable writes, recovery at start, atomic updates."""

from __future__ import annotations

import asyncio
import contextlib
import os

from gateway.model import Envelope, RecipientState, State
from gateway.spool.store import STREAM_AT, Spool, new_id


def envelope(n: int = 1) -> Envelope:
    return Envelope(id=new_id(), sender="a@brondby.dk",
                    recipients=[RecipientState(f"r{i}@x.dk", notify=("FAILURE",),
                                               orcpt="rfc822;r@x.dk") for i in range(n)],
                    received=1.0, envid="E1", ret="HDRS")


async def test_put_then_load_all(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope(2)
    await spool.put(env, b"Subject: x\r\n\r\nbody\r\n")
    again = Spool(tmp_path).load_all()
    assert [e.id for e in again] == [env.id]
    assert again[0] == env
    assert await spool.body(env.id) == b"Subject: x\r\n\r\nbody\r\n"


async def test_many_concurrent_puts_share_folder_syncs(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    envs = [envelope() for _ in range(50)]
    await asyncio.gather(*(spool.put(e, b"x\r\n") for e in envs))
    assert {e.id for e in spool.load_all()} == {e.id for e in envs}


async def test_update_and_remove(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope()
    await spool.put(env, b"x\r\n")
    env.recipients[0].state = State.DEFERRED
    env.recipients[0].last_error = "451 4.4.1 later"
    await spool.update(env)
    assert spool.read(env.id).recipients[0].last_error == "451 4.4.1 later"
    await spool.remove(env.id)
    assert spool.load_all() == [] and os.listdir(tmp_path) == []


def test_prepare_drops_unfinished_writes(tmp_path):
    (tmp_path / "A.eml.tmp").write_bytes(b"x")
    (tmp_path / "B.eml").write_bytes(b"no state: never answered 250")
    (tmp_path / "C.json").write_text("{not json")
    spool = Spool(tmp_path)
    spool.prepare()
    assert sorted(os.listdir(tmp_path)) == ["C.json"]
    assert spool.load_all() == []  # the unreadable record is logged and left for a person


def test_ids_sort_by_time_and_are_unique():
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000


async def test_from_outside_is_kept_and_old_records_load_without_it(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope()
    env.from_outside = True
    await spool.put(env, b"x\r\n")
    assert spool.read(env.id).from_outside is True
    old = env.to_json()
    del old["from_outside"]  # a record written before the field existed
    assert Envelope.from_json(old).from_outside is False


async def test_a_large_body_streams_to_its_file_and_commits_whole(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope()
    body = spool.incoming(env.id)
    chunk = b"y" * 1022 + b"\r\n"
    for _ in range(3 * STREAM_AT // len(chunk)):
        await body.write(chunk)
    assert body.streamed  # on disk already, before the commit
    assert (tmp_path / f"{env.id}.eml.tmp").stat().st_size >= STREAM_AT
    await spool.commit(env, body)
    expected = chunk * (3 * STREAM_AT // len(chunk))
    assert body.size == len(expected) and body.head == expected[:len(body.head)]
    assert (tmp_path / f"{env.id}.eml").read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{env.id}.eml", f"{env.id}.json"]
    assert await Spool(tmp_path).body(env.id) == expected


async def test_a_discarded_body_leaves_nothing(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    for size in (10, 2 * STREAM_AT):
        body = spool.incoming(new_id())
        await body.write(b"z" * size)
        body.discard()
    assert list(tmp_path.iterdir()) == []


async def test_a_body_discarded_while_its_thread_writes_leaves_nothing(tmp_path):
    # The body's file is a FIFO here, so its thread blocks opening it (a slow disk) while
    # the session is cancelled (the client hung up) and the body discarded.
    spool = Spool(tmp_path)
    spool.prepare()
    body = spool.incoming(new_id())
    fifo = tmp_path / f"{body.queue_id}.eml.tmp"
    os.mkfifo(fifo)
    session = asyncio.create_task(body.write(b"z" * STREAM_AT))
    await asyncio.sleep(0.05)  # the thread is in open()
    session.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await session
    body.discard()

    def drain() -> int:  # let the thread open and write
        fd = os.open(fifo, os.O_RDONLY)
        read = 0
        try:
            while read < STREAM_AT and (chunk := os.read(fd, 1 << 16)):
                read += len(chunk)
        finally:
            os.close(fd)
        return read

    assert await asyncio.to_thread(drain) == STREAM_AT
    for _ in range(100):  # then the body's file goes
        if not fifo.exists():
            break
        await asyncio.sleep(0.02)
    assert list(tmp_path.iterdir()) == []


async def test_recent_bodies_are_served_from_memory_until_removed(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope()
    await spool.put(env, b"Subject: x\r\n\r\nbody\r\n")
    (tmp_path / f"{env.id}.eml").unlink()  # only the cache can answer now
    assert await spool.body(env.id) == b"Subject: x\r\n\r\nbody\r\n"
    await spool.remove(env.id)
    assert list(tmp_path.iterdir()) == []
