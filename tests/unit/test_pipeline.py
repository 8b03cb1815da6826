"""The pipeline never finishes a bounce the sender was not told of."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.config import load
from gateway.delivery import Result
from gateway.errors import Reply
from gateway.model import Envelope, RecipientState, State
from gateway.pipeline import Pipeline, Policy
from gateway.policy.classify import Classifier
from gateway.policy.sepo import SepoList
from gateway.spool.store import Spool, SpoolError, new_id

DEMO = Path(__file__).parents[2] / "policies" / "gateway.toml"
MESSAGE = b"From: a@brondby.dk\r\nTo: x@hotmail.dk\r\nSubject: s\r\n\r\nhemmelig\r\n"


class Refusing:
    """A next hop (our Transport seam) that refuses every recipient for good."""

    async def deliver(self, route, domain, sender, rcpts, data, tls, **kw) -> Result:
        return Result({r.address: Reply(550, "5.1.1", "no such user") for r in rcpts})


class FullSpool(Spool):
    """A spool that cannot take new messages while `full` (a full disk)."""

    full = True

    async def put(self, envelope: Envelope, data: bytes) -> None:
        if self.full and envelope.sender == "":
            raise SpoolError("No space left on device")
        await super().put(envelope, data)


async def test_a_bounce_that_cannot_be_queued_is_retried(tmp_path):
    config = load(DEMO)
    spool = FullSpool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="a@brondby.dk", recipients=[RecipientState("x@hotmail.dk")],
                   received=time.time())
    await spool.put(env, MESSAGE)
    queued: list[Envelope] = []
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None), ())
    pipeline = Pipeline(config, spool, policy, Refusing(), queued.append)

    await pipeline.attempt(env)
    assert env.recipients[0].state == State.DEFERRED  # not final: nobody was told yet
    assert queued == []

    spool.full = False
    await pipeline.attempt(env)
    assert env.recipients[0].state == State.BOUNCED
    [dsn] = queued
    assert dsn.sender == "" and [r.address for r in dsn.recipients] == ["a@brondby.dk"]
    assert b"hemmelig" not in await spool.body(dsn.id)
