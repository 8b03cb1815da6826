"""The one place that decides what is delivered when: due recipients, back-off, concurrency.

Messages come from the edge (new), from the spool at start (recovered) and from the
queue commands (retry). Each message has at most one attempt in flight; a deferred
recipient waits retry_min, doubling up to retry_max.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.config import QueueConfig
from gateway.model import Envelope, State
from gateway.observe import maillog, metrics
from gateway.spool.store import Spool

log = logging.getLogger(__name__)

Attempt = Callable[[Envelope], Awaitable[None]]
GAUGE_REFRESH = 5.0  # seconds between updates of the queue-age gauge when idle


def backoff(attempts: int, queue: QueueConfig) -> float:
    """Seconds to wait after the n-th failed attempt: retry_min doubling up to retry_max."""
    return min(queue.retry_max, queue.retry_min * 2 ** max(0, attempts - 1))


class Scheduler:
    """Runs delivery attempts when they are due, never two for one message at a time."""

    def __init__(self, spool: Spool, attempt: Attempt, queue: QueueConfig,
                 clock: Callable[[], float] = time.time, concurrency: int | None = None) -> None:
        self.spool = spool
        self.attempt = attempt
        self.queue = queue
        self.clock = clock
        self.messages: dict[str, Envelope] = {}
        # When each message is due, soonest first; entries may be stale (checked on use),
        # so that a busy queue costs O(log n) per message instead of a scan per wake-up.
        self._due: list[tuple[float, str]] = []
        self._rescan = False  # retry() of everything: rebuild _due from the messages
        self._gauge_at = 0.0
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._slots = asyncio.Semaphore(concurrency or queue.concurrency)

    def add(self, envelope: Envelope) -> None:
        self.messages[envelope.id] = envelope
        heapq.heappush(self._due, (self.due_at(envelope), envelope.id))
        self._update_gauges()
        self._wakeup.set()

    def retry(self, queue_id: str | None = None) -> bool:
        """Make one message (or every message) due now; False for an unknown id."""
        targets = [self.messages.get(queue_id)] if queue_id else list(self.messages.values())
        if not targets or targets[0] is None:
            return False
        for env in targets:
            for r in env.recipients:
                if not r.state.final:
                    r.next_attempt = 0.0
        if queue_id:
            heapq.heappush(self._due, (0.0, queue_id))
        else:
            self._rescan = True
        self._wakeup.set()
        return True

    def busy(self, queue_id: str) -> bool:
        return queue_id in self._inflight

    def forget(self, queue_id: str) -> None:
        """Stop scheduling a message (it is being deleted)."""
        self.messages.pop(queue_id, None)
        self._update_gauges()

    def due_at(self, envelope: Envelope) -> float:
        pending = [r.next_attempt for r in envelope.recipients if not r.state.final]
        return min(pending) if pending else 0.0

    async def run(self) -> None:
        """Launch due attempts until stop() is called."""
        while not self._stopping:
            self._wakeup.clear()
            now = self.clock()
            if self._rescan:
                self._rescan = False
                self._due = [(self.due_at(e), e.id) for e in self.messages.values()]
                heapq.heapify(self._due)
            while self._due and self._due[0][0] <= now:
                _, queue_id = heapq.heappop(self._due)
                env = self.messages.get(queue_id)
                if env is None or queue_id in self._inflight:
                    continue  # gone, or due again once its attempt has finished
                due = self.due_at(env)
                if due > now:  # a stale entry: the message is due later
                    heapq.heappush(self._due, (due, queue_id))
                    continue
                self._inflight[queue_id] = asyncio.create_task(self._one(env))
            timeout = None if not self._due else max(0.0, self._due[0][0] - now)
            if now >= self._gauge_at:
                # The age grows while nothing happens, so it is refreshed on a timer (a
                # callback gauge cannot be read across worker processes).
                metrics.queue_oldest_age.set(self._oldest_age())
                self._gauge_at = now + GAUGE_REFRESH
            timeout = GAUGE_REFRESH if timeout is None else min(timeout, GAUGE_REFRESH)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _one(self, env: Envelope) -> None:
        try:
            # A slot is one delivery to a next hop. Recording its outcome waits for the
            # spool's next commit round, a fsync away: the next message need not.
            async with self._slots:
                if self._stopping:
                    return
                try:
                    await self.attempt(env)
                except Exception:
                    # Fail closed: an unexpected error defers; it never delivers or bounces.
                    log.exception("attempt for %s failed unexpectedly; deferring", env.id)
                    for r in env.recipients:
                        if not r.state.final:
                            r.state, r.last_error = State.DEFERRED, "internal error, will retry"
                            r.attempts += 1
            now = self.clock()
            for r in env.recipients:
                if r.state == State.DEFERRED and r.next_attempt <= now:
                    r.next_attempt = now + backoff(r.attempts, self.queue)
            if env.done:
                await self.spool.remove(env.id)
                self.messages.pop(env.id, None)
                maillog.removed(env.id)
            else:
                await self.spool.update(env)
        except Exception:
            log.exception("cannot record the outcome of %s; it stays queued", env.id)
        finally:
            self._inflight.pop(env.id, None)
            if env.id in self.messages:
                heapq.heappush(self._due, (self.due_at(env), env.id))
            self._update_gauges()
            self._wakeup.set()

    def _update_gauges(self) -> None:
        metrics.queue_messages.set(len(self.messages))

    def _oldest_age(self) -> float:
        oldest = min((e.received for e in self.messages.values()), default=None)
        return 0.0 if oldest is None else max(0.0, self.clock() - oldest)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop launching; let attempts in flight finish (their state is then on disk)."""
        self._stopping = True
        self._wakeup.set()
        tasks = list(self._inflight.values())
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
