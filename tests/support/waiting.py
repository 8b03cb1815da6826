"""Wait for what another task, thread or process does: poll a condition until a deadline.

A fixed sleep stands in for "it has happened" only on a quiet machine. On two shared cores
with a disk that stalls fsync for 100-400 ms (CI), the thread that writes the spool or the
daemon that flushes its log at the end of a loop turn can be later than any short sleep.
These poll instead, with a deadline (10 s) that only a condition that never comes reaches,
so a test is as fast as the machine allows and still fails when the thing never happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

WITHIN = 10.0  # seconds: far past CI's worst stall, short enough to fail a broken test

Why = str | Callable[[], str]  # what did not happen; a callable is asked only on failure


def until(condition: Callable[[], object], what: Why = "", within: float = WITHIN,
          interval: float = 0.05) -> None:
    """Poll `condition` from this thread until it is true; AssertionError after `within`."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(_failure(what, within))
        time.sleep(interval)


async def eventually(condition: Callable[[], object], what: Why = "",
                     within: float = WITHIN, interval: float = 0.01) -> None:
    """Poll `condition` without blocking the loop (the awaited work may run in it)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(_failure(what, within))
        await asyncio.sleep(interval)


def _failure(what: Why, within: float) -> str:
    text = what() if callable(what) else what
    return f"not within {within:g} s: {text}" if text else f"not within {within:g} s"
