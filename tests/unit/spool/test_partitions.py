"""Rebalancing the spool between workers keeps every message whole, in either layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.model import Envelope, RecipientState, State
from gateway.spool.partitions import envelopes, owner, partition_dir, rebalance
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
    found = {e.id: e for e in envelopes(tmp_path)}
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
    assert [e.recipients[0].attempts for e in envelopes(tmp_path)] == [3]
