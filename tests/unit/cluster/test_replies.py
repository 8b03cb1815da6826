"""The reply-routing map in PostgreSQL: a reply finds its person on any node."""

from __future__ import annotations

import pytest

from gateway.cluster.replies import DatabaseReplyMap
from gateway.inbound.replies import ReplyMapUnavailable, Sent
from tests.support.postgres import OpenNode, Postgres

RETENTION = 90 * 86400.0
SENT = 1_767_225_600.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_reply_arriving_at_another_node_finds_the_person(open_node: OpenNode):
    clock = Clock(SENT + 3600)
    sending = DatabaseReplyMap(await open_node("node1"), RETENTION, clock)
    receiving = DatabaseReplyMap(await open_node("node2"), RETENTION, clock)
    await sending.remember("<m1@brondby.dk>", Sent("lela@brondby.dk", "aeldreomsorg", SENT))
    await sending.remember("<m2@brondby.dk>", Sent("kaj@brondby.dk", "aeldreomsorg", SENT))
    assert await receiving.find(["<m1@brondby.dk>"]) == Sent("lela@brondby.dk",
                                                             "aeldreomsorg", SENT)
    # In-Reply-To first, then References: the first one known wins.
    assert (await receiving.find(["<nope@x.dk>", " m2@brondby.dk ", "<m1@brondby.dk>"])
            ).sender == "kaj@brondby.dk"
    assert await receiving.find(["<nope@x.dk>"]) is None
    assert await receiving.find([]) is None


async def test_the_identifier_itself_is_not_kept(open_node: OpenNode):
    db = await open_node()
    await DatabaseReplyMap(db, RETENTION).remember("<secret-id@brondby.dk>",
                                                   Sent("lela@brondby.dk", "x", SENT))

    async def rows(conn):
        cursor = await conn.execute("SELECT length(message_key), sender FROM reply_routes")
        return await cursor.fetchall()

    assert await db.run(rows) == [(32, "lela@brondby.dk")]


async def test_old_entries_do_not_count_and_are_pruned(open_node: OpenNode):
    clock = Clock(SENT)
    replies = DatabaseReplyMap(await open_node(), RETENTION, clock)
    await replies.remember("<old@brondby.dk>", Sent("lela@brondby.dk", "x", SENT))
    await replies.remember("<new@brondby.dk>", Sent("kaj@brondby.dk", "x", SENT + 86400))
    clock.now = SENT + RETENTION + 3600
    assert await replies.find(["<old@brondby.dk>"]) is None
    assert await replies.find(["<new@brondby.dk>"]) is not None
    assert await replies.prune() == 1
    assert await replies.prune() == 0


async def test_without_the_database_the_map_is_unavailable(open_node, private_pg: Postgres):
    replies = DatabaseReplyMap(await open_node(url=private_pg.url(private_pg.create_database())),
                               RETENTION)
    private_pg.stop()
    try:
        with pytest.raises(ReplyMapUnavailable, match="cluster database"):
            await replies.find(["<m1@brondby.dk>"])
        with pytest.raises(ReplyMapUnavailable):
            await replies.remember("<m1@brondby.dk>", Sent("a@brondby.dk", "x", SENT))
    finally:
        private_pg.start()
