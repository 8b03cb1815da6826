"""Rebalancing the spool between workers keeps every message whole, in either layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.model import Envelope, RecipientState, State
from gateway.spool.partitions import owner, partition_dir, rebalance, scan
from gateway.spool.store import Spool, new_id


def envelope() -> Envelope:
    return Envelope(id=new_id(), sender="a@brondby.dk", recipients=[RecipientState("r@x.dk")],
                    received=1.0)


def old_layout(folder: Path, env: Envelope, data: bytes) -> None:
    """A message as versions before the message files wrote it: body and state apart."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{env.id}.eml").write_bytes(data)
    (folder / f"{env.id}.json").write_text(json.dumps(env.to_json()))


async def test_fewer_workers_get_every_message_of_either_layout(tmp_path):
    new, updated, old = envelope(), envelope(), envelope()
    spool = Spool(partition_dir(tmp_path, 2))
    spool.prepare()
    await spool.put(new, b"Subject: ny\r\n\r\nx\r\n")
    await spool.put(updated, b"Subject: opdateret\r\n\r\nx\r\n")
    updated.recipients[0].state = State.DEFERRED
    await spool.update(updated)
    old_layout(tmp_path, old, b"Subject: flad\r\n\r\nx\r\n")  # the flat spool of old
    assert rebalance(tmp_path, 2) == 3
    assert sorted(os.listdir(tmp_path)) == ["w0", "w1"]
    found = {e.id: e for e in scan(tmp_path).envelopes}
    assert found == {e.id: e for e in (new, updated, old)}
    for env in (new, updated, old):
        index, home = owner(tmp_path, env.id)
        assert index in (0, 1)
        assert (await home.body(env.id)).startswith(b"Subject: ")


async def test_a_state_left_behind_by_a_crash_follows_its_message(tmp_path):
    env = envelope()
    leaving = Spool(partition_dir(tmp_path, 2))
    leaving.prepare()
    await leaving.put(env, b"Subject: x\r\n\r\nx\r\n")
    env.recipients[0].attempts = 3
    await leaving.update(env)
    home = partition_dir(tmp_path, 1)  # not where the first message of w2 would go now
    home.mkdir()
    # The crash came after the message file was moved and before its state was.
    os.replace(leaving.dir / f"{env.id}.msg", home / f"{env.id}.msg")
    rebalance(tmp_path, 2)
    assert sorted(os.listdir(home)) == [f"{env.id}.json", f"{env.id}.msg"]
    assert [e.recipients[0].attempts for e in scan(tmp_path).envelopes] == [3]


async def test_a_message_and_its_state_apart_meet_again_with_fewer_workers(tmp_path):
    # A crash while four workers were given the flat spool: the message file went to w3,
    # its state stayed in the root. Now two workers start: neither owns w3 nor the root.
    for layout in ("msg", "eml"):
        root = tmp_path / layout
        env = envelope()
        env.recipients[0].state, env.recipients[0].attempts = State.DEFERRED, 2
        w3 = partition_dir(root, 3)
        if layout == "msg":
            spool = Spool(w3)
            spool.prepare()
            await spool.put(env, b"Subject: x\r\n\r\nx\r\n")
        else:
            old_layout(w3, env, b"Subject: x\r\n\r\nx\r\n")
            (w3 / f"{env.id}.json").unlink()
        (root / f"{env.id}.json").write_text(json.dumps(env.to_json()))
        rebalance(root, 2)
        index, home = owner(root, env.id)
        assert sorted(os.listdir(home.dir)) == sorted([f"{env.id}.json", f"{env.id}.{layout}"])
        Spool(home.dir).prepare()
        assert [e.recipients[0].attempts for e in scan(root).envelopes] == [2]
        assert not list(root.rglob("quarantine"))


async def test_a_message_and_its_state_apart_meet_again_with_more_workers(tmp_path):
    # A crash while w2's messages went to two workers: the message file is in w0, its
    # state still in w2, which four workers own again.
    env = envelope()
    w0, w2 = partition_dir(tmp_path, 0), partition_dir(tmp_path, 2)
    spool = Spool(w2)
    spool.prepare()
    await spool.put(env, b"Subject: x\r\n\r\nx\r\n")
    env.recipients[0].attempts = 1
    await spool.update(env)
    w0.mkdir()
    os.replace(w2 / f"{env.id}.msg", w0 / f"{env.id}.msg")
    rebalance(tmp_path, 4)
    assert sorted(os.listdir(w0)) == [f"{env.id}.json", f"{env.id}.msg"]
    assert os.listdir(w2) == []
    assert [e.recipients[0].attempts for e in scan(tmp_path).envelopes] == [1]


async def test_a_moved_message_is_checked_where_it_goes(tmp_path):
    # Its CRC is read once, by the worker that owns it, not also before the move.
    env = envelope()
    spool = Spool(partition_dir(tmp_path, 1))
    spool.prepare()
    await spool.put(env, b"Subject: x\r\n\r\nx\r\n")
    path = spool.dir / f"{env.id}.msg"
    rotten = bytearray(path.read_bytes())
    rotten[3] ^= 0x20
    path.write_bytes(bytes(rotten))
    rebalance(tmp_path, 1)
    w0 = partition_dir(tmp_path, 0)
    assert os.listdir(w0) == [f"{env.id}.msg"]
    Spool(w0).prepare()
    assert os.listdir(w0 / "quarantine") == [f"{env.id}.msg"]


async def test_a_listing_before_the_next_start_leaves_a_state_apart_from_its_message(
        tmp_path):
    # `queue list` with the daemon stopped after a crash in a rebalance: the state
    # without its message is not quarantined, so the next start can bring them together.
    env = envelope()
    w3 = partition_dir(tmp_path, 3)
    spool = Spool(w3)
    spool.prepare()
    await spool.put(env, b"Subject: x\r\n\r\nx\r\n")
    env.recipients[0].attempts = 1
    (tmp_path / f"{env.id}.json").write_text(json.dumps(env.to_json()))
    assert [e.recipients[0].attempts for e in scan(tmp_path).envelopes] == [0]  # as it arrived
    assert not list(tmp_path.rglob("quarantine"))
    rebalance(tmp_path, 1)
    assert sorted(os.listdir(partition_dir(tmp_path, 0))) == [f"{env.id}.json",
                                                               f"{env.id}.msg"]
    assert [e.recipients[0].attempts for e in scan(tmp_path).envelopes] == [1]
