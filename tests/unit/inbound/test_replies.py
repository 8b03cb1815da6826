"""The reply map: who sent each secure mail, for as long as the retention period says."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from gateway.config import DepartmentConfig
from gateway.inbound.receive import DECRYPTED, NOT_DECRYPTED, Inbound
from gateway.inbound.replies import FileReplyMap, ReplyMapUnavailable, Sent, reply_targets
from gateway.policy.departments import Department
from tests.support.pki import Issued

DAY = 86400.0
INTERNAL = ("brondby.dk",)


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))  # files get their mtime from the real clock

    def __call__(self) -> float:
        return self.now


async def test_remember_and_find_within_the_retention_period(tmp_path: Path):
    clock = Clock()
    replies = FileReplyMap(tmp_path, retention=30 * DAY, clock=clock)
    await replies.remember("<svar-1@brondby.dk>", Sent("lela@brondby.dk", "aeldreomsorg",
                                                         clock.now))
    found = await replies.find(["<ukendt@x.dk>", " svar-1@brondby.dk "])
    assert found == Sent("lela@brondby.dk", "aeldreomsorg", clock.now)
    [path] = entries(tmp_path)
    assert "svar-1" not in path.read_text()  # the Message-ID itself is not kept
    assert json.loads(path.read_text())["sender"] == "lela@brondby.dk"
    clock.now += 31 * DAY
    assert await replies.find(["<svar-1@brondby.dk>"]) is None  # too old to route


async def test_prune_forgets_old_entries(tmp_path: Path):
    clock = Clock()
    replies = FileReplyMap(tmp_path, retention=DAY, clock=clock)
    for name in ("old", "new"):
        await replies.remember(f"<{name}@brondby.dk>", Sent("a@brondby.dk", "d", clock.now))
    [old] = [p for p in entries(tmp_path) if p.name.startswith(_digest("old@brondby.dk"))]
    os.utime(old, (clock.now - 2 * DAY, clock.now - 2 * DAY))
    assert await replies.prune() == 1
    assert await replies.find(["<new@brondby.dk>"]) is not None
    assert await FileReplyMap(tmp_path / "none", DAY).prune() == 0


async def test_an_unreadable_map_is_unavailable_not_empty(tmp_path: Path):
    (tmp_path / "map").write_text("a file where the folder should be")
    replies = FileReplyMap(tmp_path / "map", DAY)
    with pytest.raises(ReplyMapUnavailable):
        await replies.remember("<a@b.dk>", Sent("a@brondby.dk", "d", 0))


class Map(FileReplyMap):
    """A reply map that knows one entry, whatever is asked."""

    def __init__(self, entry: Sent | None) -> None:
        self.entry = entry

    async def find(self, message_ids):
        return self.entry


def make_department(issued: Issued, **keys) -> Department:
    config = DepartmentConfig(id="aeldreomsorg", name="Ældre og Omsorg",
                              mailbox="aeldreomsorg@brondby.dk", cert=Path("c"), key=Path("k"),
                              senders=("*@brondby.dk",), **keys)
    return Department(config, issued.cert, (), issued.key)


REPLY = Inbound(b"", DECRYPTED, replied_to=("<svar-1@brondby.dk>",))
SENT = Sent("lela@brondby.dk", "aeldreomsorg", 0)


async def test_reply_targets(department: Issued):
    dep = make_department(department, replies="department")
    copy = make_department(department, replies="department", reply_copy=True)
    mailbox = "aeldreomsorg@brondby.dk"
    assert await reply_targets(REPLY, mailbox, [dep], Map(SENT), INTERNAL) == ["lela@brondby.dk"]
    assert await reply_targets(REPLY, mailbox, [copy], Map(SENT), INTERNAL) == [
        "lela@brondby.dk", mailbox]
    # Nothing to route: the copy goes where it was addressed.
    person = make_department(department)  # replies = "person"
    assert await reply_targets(REPLY, mailbox, [person], Map(SENT), INTERNAL) == [mailbox]
    assert await reply_targets(REPLY, "lela@brondby.dk", [dep], Map(SENT), INTERNAL) == [
        "lela@brondby.dk"]
    assert await reply_targets(REPLY, mailbox, [dep], Map(None), INTERNAL) == [mailbox]
    assert await reply_targets(REPLY, mailbox, [dep], None, INTERNAL) == [mailbox]
    encrypted_elsewhere = Inbound(b"", NOT_DECRYPTED, replied_to=REPLY.replied_to)
    assert await reply_targets(encrypted_elsewhere, mailbox, [dep], Map(SENT), INTERNAL) == [
        mailbox]
    other = Sent("lela@brondby.dk", "jobcenter", 0)
    assert await reply_targets(REPLY, mailbox, [dep], Map(other), INTERNAL) == [mailbox]
    outside = Sent("lela@hotmail.dk", "aeldreomsorg", 0)  # never routed out of the house
    assert await reply_targets(REPLY, mailbox, [dep], Map(outside), INTERNAL) == [mailbox]


def entries(root: Path) -> list[Path]:
    return list(root.rglob("*.json"))


def _digest(message_id: str) -> str:
    return hashlib.sha256(message_id.encode()).hexdigest()
