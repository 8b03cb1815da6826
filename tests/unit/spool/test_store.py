"""The spool keeps what it accepted: durable writes, recovery at start, atomic updates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

from gateway.model import Envelope, RecipientState, State
from gateway.spool.body import Spooled, whole
from gateway.spool.store import FOOTER_SIZE, STREAM_AT, Spool, new_id
from tests.support.waiting import eventually


def envelope(n: int = 1) -> Envelope:
    return Envelope(id=new_id(), sender="a@brondby.dk",
                    recipients=[RecipientState(f"r{i}@x.dk", notify=("FAILURE",),
                                               orcpt="rfc822;r@x.dk") for i in range(n)],
                    received=1.0, envid="E1", ret="HDRS")


async def spooled_one(tmp_path) -> tuple[Spool, Envelope]:
    """A spool in `tmp_path` holding one small message."""
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope()
    await spool.put(env, b"Subject: x\r\n\r\nbody\r\n")
    return spool, env


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
    assert spool.load_all() == [] and os.listdir(tmp_path) == [f"{env.id}.free"]


async def test_the_file_of_a_finished_message_is_emptied_and_written_into_again(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    first, second = envelope(), envelope()
    await spool.put(first, b"Subject: en\r\n\r\nfortroligt\r\n")
    inode = (tmp_path / f"{first.id}.msg").stat().st_ino
    await spool.remove(first.id)
    free = tmp_path / f"{first.id}.free"
    assert free.stat().st_size == 0  # nothing of a delivered message stays on the disk
    assert spool.load_all() == [] and not spool.holds(first.id)
    await spool.put(second, b"Subject: to\r\n\r\nx\r\n")
    assert os.listdir(tmp_path) == [f"{second.id}.msg"]
    assert (tmp_path / f"{second.id}.msg").stat().st_ino == inode  # no new inode
    assert Spool(tmp_path).load_all() == [second]


def test_emptied_files_left_from_before_are_emptied_again_and_kept(tmp_path):
    # A crash between a new message's write into an emptied file and its rename.
    (tmp_path / "0661937434AAAA000000.free").write_bytes(b"Subject: never answered 250")
    spool = Spool(tmp_path)
    spool.prepare()
    assert spool.load_all() == []
    assert (tmp_path / "0661937434AAAA000000.free").stat().st_size == 0


def test_prepare_drops_unfinished_writes(tmp_path):
    (tmp_path / "A.json.tmp").write_bytes(b"x")
    (tmp_path / "B.eml").write_bytes(b"no state: never answered 250")
    (tmp_path / "C.json").write_text("{not json")
    (tmp_path / "D.msg").write_bytes(b"Subject: x\r\n\r\nstreamed, no envelope yet")
    spool = Spool(tmp_path)
    spool.prepare()
    assert sorted(os.listdir(tmp_path)) == ["quarantine"]
    assert spool.load_all() == []  # the record without a message is left for a person
    assert sorted(os.listdir(tmp_path / "quarantine")) == ["C.json"]


async def test_a_message_file_cut_short_is_dropped_at_start(tmp_path):
    # A crash while the commit round wrote it: the footer's lengths do not fit the file.
    spool, env = await spooled_one(tmp_path)
    path = tmp_path / f"{env.id}.msg"
    data = path.read_bytes()
    path.write_bytes(data[:10] + data[-FOOTER_SIZE:])
    assert spool.load_all() == []  # still being written, as far as anyone can tell
    Spool(tmp_path).prepare()
    assert os.listdir(tmp_path) == []


async def test_a_message_file_whose_crc_does_not_match_is_quarantined(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    sound, rotten = envelope(), envelope()
    for env in (sound, rotten):
        await spool.put(env, b"Subject: x\r\n\r\nbody\r\n")
    path = tmp_path / f"{rotten.id}.msg"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x20  # one bit flipped on the disk
    path.write_bytes(bytes(data))
    fresh = Spool(tmp_path)
    fresh.prepare()
    assert [e.id for e in fresh.load_all()] == [sound.id]
    assert os.listdir(tmp_path / "quarantine") == [f"{rotten.id}.msg"]


async def test_a_message_file_holding_another_envelope_is_quarantined(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope()
    await spool.put(env, b"x\r\n")
    os.rename(tmp_path / f"{env.id}.msg", tmp_path / "0661937434AAAA000000.msg")
    assert spool.load_all() == []
    assert os.listdir(tmp_path / "quarantine") == ["0661937434AAAA000000.msg"]


async def test_one_file_per_message_until_its_state_changes(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope()
    data = b"Subject: x\r\n\r\nbody\r\n"
    await spool.put(env, data)
    assert os.listdir(tmp_path) == [f"{env.id}.msg"]
    assert (tmp_path / f"{env.id}.msg").read_bytes().startswith(data)  # the message first
    env.recipients[0].state, env.recipients[0].attempts = State.DEFERRED, 1
    await spool.update(env)
    assert sorted(os.listdir(tmp_path)) == [f"{env.id}.json", f"{env.id}.msg"]
    for fresh in (Spool(tmp_path), Spool(tmp_path)):  # the state wins over the arrival
        fresh.prepare()
        assert [e.recipients[0].attempts for e in fresh.load_all()] == [1]
        assert fresh.read(env.id).recipients[0].state == State.DEFERRED
        assert await fresh.body(env.id) == data and await fresh.message(env.id) == data
    await spool.remove(env.id)
    assert os.listdir(tmp_path) == [f"{env.id}.free"]


async def test_a_spool_of_the_two_file_layout_is_read_updated_and_removed(tmp_path):
    # What versions before the message files left behind: DIR/<id>.eml with DIR/<id>.json.
    small, large = envelope(), envelope(2)
    bodies = {small.id: b"Subject: lille\r\n\r\nkort\r\n",
              large.id: b"Subject: stor\r\n\r\n" + b"z" * 1022 * 2048 + b"\r\n"}
    for env in (small, large):
        (tmp_path / f"{env.id}.eml").write_bytes(bodies[env.id])
        (tmp_path / f"{env.id}.json").write_text(json.dumps(env.to_json()))
    spool = Spool(tmp_path)
    spool.prepare()
    assert spool.load_all() == [small, large]
    assert spool.read(large.id) == large and spool.holds(large.id)
    assert await spool.message(small.id) == bodies[small.id]
    spooled = await spool.message(large.id)
    assert isinstance(spooled, Spooled) and await whole(spooled) == bodies[large.id]
    assert await spool.body(large.id) == bodies[large.id]
    large.recipients[0].state = State.DELIVERED
    await spool.update(large)
    assert Spool(tmp_path).read(large.id).recipients[0].state == State.DELIVERED
    for env in (small, large):
        await spool.remove(env.id)
    assert os.listdir(tmp_path) == []


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


async def test_dsn_owed_is_kept_and_old_records_load_without_it(tmp_path):
    spool, env = await spooled_one(tmp_path)
    env.recipients[0].state, env.recipients[0].dsn_owed = State.BOUNCED, "rejected"
    await spool.update(env)
    assert Spool(tmp_path).read(env.id).recipients[0].dsn_owed == "rejected"
    old = env.to_json()
    del old["recipients"][0]["dsn_owed"]  # a record written before the field existed
    assert Envelope.from_json(old).recipients[0].dsn_owed == ""
    old["recipients"][0]["dsn_owed"] = True  # when only a deletion could owe a DSN
    assert Envelope.from_json(old).recipients[0].dsn_owed == "deleted"


async def test_a_scan_reports_what_it_cannot_read_and_only_load_all_quarantines(tmp_path):
    spool, env = await spooled_one(tmp_path)
    (tmp_path / f"{env.id}.json").write_text("{not json")
    found = Spool(tmp_path).scan()
    assert found.envelopes == [] and list(found.unreadable) == [tmp_path / env.id]
    assert sorted(os.listdir(tmp_path)) == [f"{env.id}.json", f"{env.id}.msg"]
    assert Spool(tmp_path).load_all() == []
    assert sorted(os.listdir(tmp_path / "quarantine")) == [f"{env.id}.json", f"{env.id}.msg"]


async def test_a_large_body_streams_to_its_file_and_commits_whole(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope()
    body = spool.incoming(env.id)
    chunk = b"y" * 1022 + b"\r\n"
    await body.write(b"Subject: stor\r\n\r\n")
    for _ in range(3 * STREAM_AT // len(chunk)):
        await body.write(chunk)
    assert body.streamed  # on disk already, before the commit
    assert (tmp_path / f"{env.id}.msg").stat().st_size >= STREAM_AT
    assert Spool(tmp_path).load_all() == []  # no footer yet: not a message yet
    await spool.commit(env, body)
    expected = b"Subject: stor\r\n\r\n" + chunk * (3 * STREAM_AT // len(chunk))
    assert body.size == len(expected) and body.head == expected[:len(body.head)]
    assert (tmp_path / f"{env.id}.msg").read_bytes().startswith(expected)
    assert [p.name for p in tmp_path.iterdir()] == [f"{env.id}.msg"]
    fresh = Spool(tmp_path)
    fresh.prepare()  # its CRC, made piece by piece as it streamed, is the whole file's
    assert fresh.load_all() == [env]
    assert await fresh.body(env.id) == expected
    spooled = await fresh.message(env.id)  # the envelope after it is never sent
    assert isinstance(spooled, Spooled) and spooled.offset + spooled.body_size == len(expected)
    assert await whole(spooled) == expected


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
    fifo = tmp_path / f"{body.queue_id}.msg"
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
    # Then the body's file goes, once the thread's write has ended (another thread hop).
    await eventually(lambda: not fifo.exists(), "the body's file removed")
    assert list(tmp_path.iterdir()) == []


async def test_recent_bodies_are_served_from_memory_until_removed(tmp_path):
    spool = Spool(tmp_path)
    spool.prepare()
    env = envelope()
    await spool.put(env, b"Subject: x\r\n\r\nbody\r\n")
    (tmp_path / f"{env.id}.msg").unlink()  # only the cache can answer now
    assert await spool.body(env.id) == b"Subject: x\r\n\r\nbody\r\n"
    await spool.remove(env.id)
    assert list(tmp_path.iterdir()) == []


async def test_a_message_file_whose_footer_is_damaged_is_quarantined_not_removed(tmp_path):
    # The footer was written, so a 250 may have been given: a person looks, nothing is lost.
    _, env = await spooled_one(tmp_path)
    path = tmp_path / f"{env.id}.msg"
    data = bytearray(path.read_bytes())
    data[-3] = ord("z")  # a bit flipped in the footer's CRC field: no longer hexadecimal
    path.write_bytes(bytes(data))
    Spool(tmp_path).prepare()
    assert os.listdir(tmp_path / "quarantine") == [f"{env.id}.msg"]


async def test_a_state_beside_an_emptied_message_file_is_a_finished_message(tmp_path):
    # What a crash leaves while a finished message is taken away: its file emptied (and
    # perhaps renamed .free), its state not yet unlinked. Nobody is delivered to again.
    for kept in (False, True):
        folder = tmp_path / str(kept)
        spool = Spool(folder)
        spool.prepare()
        env = envelope(2)
        await spool.put(env, b"Subject: x\r\n\r\nbody\r\n")
        env.recipients[0].state = State.DELIVERED
        await spool.update(env)
        message = folder / f"{env.id}.msg"
        os.truncate(message, 0)
        if kept:
            os.rename(message, folder / f"{env.id}.free")
            assert spool.load_all() == []  # read before the next start: not queued either
        fresh = Spool(folder)
        fresh.prepare()
        assert fresh.load_all() == []
        assert os.listdir(folder) == ([f"{env.id}.free"] if kept else [])
