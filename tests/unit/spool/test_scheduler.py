"""The scheduler: growing back-off, one attempt per message at a time, bounded concurrency,
and what it writes to the spool after each attempt."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import QueueConfig
from gateway.model import Envelope, RecipientState, State
from gateway.spool.scheduler import Scheduler, backoff
from gateway.spool.store import Spool, new_id
from tests.support.waiting import eventually

QUEUE = QueueConfig(retry_min=60, retry_max=3600, concurrency=2)


def test_backoff_doubles_up_to_retry_max():
    assert [backoff(n, QUEUE) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600,
                                                        3600]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def queued(spool: Spool, *addresses: str) -> Envelope:
    env = Envelope(id=new_id(), sender="a@brondby.dk",
                   recipients=[RecipientState(a) for a in addresses], received=1000.0)
    await spool.put(env, b"Subject: x\r\n\r\nx\r\n")
    return env


@pytest.fixture
def spool(tmp_path) -> Spool:
    s = Spool(tmp_path)
    s.prepare()
    return s


async def test_deferred_recipient_waits_and_delivered_message_leaves(spool):
    clock = Clock()
    outcomes = iter([State.DEFERRED, State.DEFERRED, State.DELIVERED])
    seen: list[float] = []

    async def attempt(env: Envelope) -> None:
        seen.append(clock.now)
        r = env.recipients[0]
        r.state, r.attempts = next(outcomes), r.attempts + 1

    scheduler = Scheduler(spool, attempt, QUEUE, clock=clock)
    env = await queued(spool, "x@hotmail.dk")
    scheduler.add(env)
    task = asyncio.create_task(scheduler.run())
    # The state is written in a thread, a fsync or two away: wait for it on disk.
    await eventually(lambda: spool.read(env.id).recipients[0].next_attempt != 0,
                     "the first outcome on disk")
    assert seen == [1000.0]
    assert env.recipients[0].next_attempt == 1060.0  # retry_min after the first failure
    assert spool.read(env.id).recipients[0].next_attempt == 1060.0  # and on disk
    clock.now = 1060.0
    scheduler.retry()  # wake it: the fake clock does not advance the loop's timer
    await eventually(lambda: len(seen) == 2, "the second attempt")
    await eventually(lambda: env.recipients[0].next_attempt != 1060.0, "the second outcome")
    assert env.recipients[0].next_attempt == 1180.0  # doubled
    clock.now = 1180.0
    scheduler.retry()
    await eventually(lambda: not scheduler.messages, "the delivered message removed")
    assert seen == [1000.0, 1060.0, 1180.0]
    assert scheduler.messages == {} and spool.load_all() == []
    await scheduler.stop()
    await task


async def test_one_attempt_per_message_and_concurrency_limit(spool):
    running: set[str] = set()
    peak = 0
    release = asyncio.Event()

    async def attempt(env: Envelope) -> None:
        nonlocal peak
        assert env.id not in running
        running.add(env.id)
        peak = max(peak, len(running))
        await release.wait()
        running.discard(env.id)
        env.recipients[0].state = State.DELIVERED

    scheduler = Scheduler(spool, attempt, QUEUE)
    for _ in range(5):
        scheduler.add(await queued(spool, "x@hotmail.dk"))
    task = asyncio.create_task(scheduler.run())
    await eventually(lambda: len(running) == 2, "two attempts running")
    scheduler.retry()  # asking again while they run must not start a second attempt
    await asyncio.sleep(0.05)  # (a chance to start one, which must not be taken)
    assert peak == 2
    release.set()
    await eventually(lambda: not scheduler.messages, "every message removed")
    await scheduler.stop()
    await task


class GatedSpool(Spool):
    """A spool whose removals wait for `gate`, as they wait for a commit round's fsync."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()

    async def remove(self, queue_id: str) -> None:
        await self.gate.wait()
        await super().remove(queue_id)


async def test_recording_an_outcome_does_not_hold_a_delivery_slot(tmp_path):
    spool = GatedSpool(tmp_path)
    spool.prepare()
    attempts: list[str] = []

    async def attempt(env: Envelope) -> None:
        attempts.append(env.id)
        env.recipients[0].state = State.DELIVERED

    scheduler = Scheduler(spool, attempt, QueueConfig(concurrency=1))
    first, second = await queued(spool, "x@hotmail.dk"), await queued(spool, "y@hotmail.dk")
    scheduler.add(first)
    scheduler.add(second)
    task = asyncio.create_task(scheduler.run())
    # The first's removal never ends while the gate is shut: the second comes all the same.
    await eventually(lambda: len(attempts) == 2, "the second attempt")
    assert attempts == [first.id, second.id]  # the second did not wait for the first's removal
    scheduler.retry()  # still one attempt per message: the first is not tried again meanwhile
    await asyncio.sleep(0.05)  # (a chance to try it again, which must not be taken)
    assert attempts == [first.id, second.id]
    assert scheduler.busy(first.id) and {e.id for e in spool.load_all()} == {first.id, second.id}
    spool.gate.set()
    await eventually(lambda: not scheduler.messages, "both messages removed")
    assert scheduler.messages == {} and spool.load_all() == []
    await scheduler.stop()
    await task


async def test_unexpected_error_defers_never_drops(spool):
    async def attempt(env: Envelope) -> None:
        raise RuntimeError("bug")

    scheduler = Scheduler(spool, attempt, QUEUE)
    env = await queued(spool, "x@hotmail.dk", "y@hotmail.dk")
    scheduler.add(env)
    task = asyncio.create_task(scheduler.run())
    await eventually(lambda: spool.read(env.id).recipients[0].attempts == 1,
                     "the deferral on disk")
    on_disk = spool.read(env.id)
    assert [r.state for r in on_disk.recipients] == [State.DEFERRED, State.DEFERRED]
    assert on_disk.recipients[0].last_error == "internal error, will retry"
    await scheduler.stop()
    await task


async def test_retry_unknown_id(spool):
    async def attempt(env: Envelope) -> None:
        pass

    scheduler = Scheduler(spool, attempt, QUEUE)
    assert scheduler.retry("NOSUCH") is False
