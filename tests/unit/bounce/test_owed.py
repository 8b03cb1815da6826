"""A DSN is spooled only once the outcome it tells of is on disk, owed; a debt a crash
left is paid at the next start, and a recipient still pending is delivered as ever; each
recipient's own NOTIFY decides whether it is reported (RFC 3461); and a message with no
news is written no more often than before."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway.bounce import owed
from gateway.config import load
from gateway.delivery import Result
from gateway.errors import Reply
from gateway.model import Envelope, RecipientState, State
from gateway.pipeline import Pipeline, Policy
from gateway.policy.classify import Classifier
from gateway.policy.sepo import SepoList
from gateway.spool import admin
from gateway.spool.store import Spool, new_id

DEMO = Path(__file__).parents[3] / "policies" / "gateway.toml"
MESSAGE = b"From: a@brondby.dk\r\nTo: b@hotmail.dk, c@hotmail.dk\r\nSubject: s\r\n\r\nx\r\n"
NO_SUCH_USER = Reply(550, "5.1.1", "no such user")
TRY_LATER = Reply(451, "4.4.1", "try later")


class Hop:
    """A next hop (our Transport seam): `replies` by address, 250 for any other."""

    def __init__(self, **replies: Reply) -> None:
        self.replies = {f"{local}@hotmail.dk": reply for local, reply in replies.items()}

    async def deliver(self, route, domain, sender, rcpts, data, tls, **kw) -> Result:
        return Result({r.address: self.replies.get(r.address, Reply(250, "2.0.0", "ok"))
                       for r in rcpts})


class Witness(Spool):
    """A real spool that notes, as each DSN is spooled, the message's record on disk
    then (what a kill -9 at that moment would leave), and counts the state writes."""

    def __init__(self, path: Path, watched: str) -> None:
        super().__init__(path)
        self.watched = watched
        self.at_dsn: list[Envelope | None] = []
        self.updates = 0

    async def put(self, envelope: Envelope, data: bytes) -> None:
        if envelope.sender == "":
            self.at_dsn.append(Spool(self.dir).read(self.watched))
        await super().put(envelope, data)

    async def update(self, envelope: Envelope) -> None:
        self.updates += 1
        await super().update(envelope)


async def attempted(tmp_path: Path, hop: Hop, *recipients: RecipientState,
                    received: float | None = None) -> tuple[Envelope, Witness, list[Envelope]]:
    """One delivery attempt of a new message to `recipients` through `hop`."""
    env = Envelope(id=new_id(), sender="a@brondby.dk", recipients=list(recipients),
                   received=time.time() if received is None else received)
    spool = Witness(tmp_path, env.id)
    spool.prepare()
    await spool.put(env, MESSAGE)
    queued: list[Envelope] = []
    policy = Policy(Classifier(("brondby.dk",), SepoList(frozenset(), tmp_path), None), ())
    await Pipeline(load(DEMO), spool, policy, hop, queued.append).attempt(env)
    return env, spool, queued


def restarted(tmp_path: Path, record: Envelope | None) -> tuple[Spool, Envelope]:
    """A fresh start on the spool after a kill -9 that left `record` as the state."""
    spool = Spool(tmp_path)
    spool.prepare()
    assert record is not None
    (tmp_path / f"{record.id}.json").write_text(json.dumps(record.to_json()))
    [env] = [e for e in spool.load_all() if e.id == record.id]
    return spool, env


async def test_a_bounce_is_on_disk_owing_its_dsn_before_the_dsn_is_spooled(tmp_path):
    env, spool, queued = await attempted(tmp_path, Hop(b=NO_SUCH_USER, c=TRY_LATER),
                                         RecipientState("b@hotmail.dk"),
                                         RecipientState("c@hotmail.dk"))
    [on_disk] = spool.at_dsn
    assert on_disk is not None
    b, c = on_disk.recipients
    assert (b.state, b.dsn_owed, c.state, c.dsn_owed) == (
        State.BOUNCED, "rejected", State.DEFERRED, "")
    assert len(queued) == 1 and [r.dsn_owed for r in env.recipients] == ["", ""]  # paid


async def test_a_start_pays_a_bounce_left_owed_and_still_delivers_the_rest(tmp_path):
    _, spool, _ = await attempted(tmp_path, Hop(b=NO_SUCH_USER, c=TRY_LATER),
                                  RecipientState("b@hotmail.dk"),
                                  RecipientState("c@hotmail.dk"))
    config = load(DEMO)
    again, env = restarted(tmp_path, spool.at_dsn[0])
    assert owed.owes_dsn(env)
    [dsn] = await owed.settle(again, config, env)
    report = await again.body(dsn.id)
    assert b"Final-Recipient: rfc822; b@hotmail.dk\r\nAction: failed\r\n" in report
    assert b"Diagnostic-Code: x-send-sikkert; 550 5.1.1 no such user" in report
    assert b"Final-Recipient: rfc822; c@hotmail.dk" not in report
    kept = Spool(tmp_path).read(env.id)  # the debt paid on disk; c is still to deliver
    assert kept is not None and not owed.owes_dsn(kept)
    assert [r.state for r in kept.recipients] == [State.BOUNCED, State.DEFERRED]


async def test_a_delay_warning_is_on_disk_before_it_is_sent_and_paid_at_a_start(tmp_path):
    config = load(DEMO)
    _, spool, queued = await attempted(tmp_path, Hop(c=TRY_LATER), RecipientState("c@hotmail.dk"),
                                       received=time.time() - config.queue.delay_warning - 1)
    [on_disk] = spool.at_dsn
    assert on_disk is not None
    [c] = on_disk.recipients
    assert (c.state, c.delay_warned, c.dsn_owed) == (State.DEFERRED, True, "delayed")
    again, env = restarted(tmp_path, on_disk)
    [dsn] = await owed.settle(again, config, env)
    report = await again.body(dsn.id)
    assert b"Action: delayed" in report and b"Will-Retry-Until:" in report
    kept = Spool(tmp_path).read(env.id)
    assert kept is not None and kept.recipients[0].delay_warned
    assert not owed.owes_dsn(kept)


async def test_a_message_with_no_news_is_not_written_before_the_scheduler_writes(tmp_path):
    # Delivered without SUCCESS asked, or bounced with NOTIFY=NEVER: nothing is owed.
    _, spool, queued = await attempted(tmp_path, Hop(c=NO_SUCH_USER),
                                       RecipientState("b@hotmail.dk"),
                                       RecipientState("c@hotmail.dk", notify=("NEVER",)))
    assert spool.updates == 0 and queued == [] and spool.at_dsn == []


async def test_a_success_asked_for_is_on_disk_before_its_dsn(tmp_path):
    _, spool, queued = await attempted(tmp_path, Hop(),
                                       RecipientState("b@hotmail.dk", notify=("SUCCESS",)))
    [on_disk] = spool.at_dsn
    assert on_disk is not None
    assert (on_disk.recipients[0].state, on_disk.recipients[0].dsn_owed) == (
        State.DELIVERED, "delivered")  # the demo's routes are files
    assert len(queued) == 1


async def test_a_deletion_reports_only_the_recipients_whose_notify_asks(tmp_path):
    config = load(DEMO)
    spool = Spool(tmp_path)
    spool.prepare()
    env = Envelope(id=new_id(), sender="a@brondby.dk", received=time.time(), recipients=[
        RecipientState("b@hotmail.dk", notify=("NEVER",)), RecipientState("c@hotmail.dk")])
    await spool.put(env, MESSAGE)
    [dsn] = await admin.delete(spool, config, env)
    report = await spool.body(dsn.id)
    assert b"Final-Recipient: rfc822; c@hotmail.dk" in report
    assert b"Final-Recipient: rfc822; b@hotmail.dk" not in report
    never = Envelope(id=new_id(), sender="a@brondby.dk", received=time.time(),
                     recipients=[RecipientState("b@hotmail.dk", notify=("NEVER",))])
    await spool.put(never, MESSAGE)
    assert await admin.delete(spool, config, never) == []
    assert spool.read(never.id) is None
