"""The spool split between worker processes: DIR/w0, DIR/w1, ... one folder per worker.

Each worker writes and delivers only the messages in its own folder, so workers never
share a file, a lock or an fsync. The supervisor holds the one lock (DIR/.lock) for all
of them and, before any worker starts, moves every message of a folder no worker will
own (fewer workers than before, or the flat spool of a version without workers) into
the folders of those that will: nothing left behind is ever orphaned. Moving is a
rename of the body first and the state last, each folder fsynced, so a crash halfway
leaves a message whole in one place or the other (RFC 5321 6.1: never lose a message);
a state left behind alone by a crash follows its message the next time.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from gateway.model import Envelope
from gateway.spool.store import BODY, FREE, MESSAGE, STATE, Spool, fsync_dir, queue_ids

log = logging.getLogger(__name__)

_PARTITION = re.compile(r"w(\d+)")


def partition_dir(root: Path, index: int) -> Path:
    return root / f"w{index}"


def partitions(root: Path) -> list[Path]:
    """Every folder that may hold messages: the root (flat, older spools) and each wN."""
    found = [root] if root.is_dir() else []
    if root.is_dir():
        found += sorted((p for p in root.iterdir() if p.is_dir() and _PARTITION.fullmatch(p.name)),
                        key=lambda p: int(p.name[1:]))
    return found


def rebalance(root: Path, workers: int) -> int:
    """Give every message to one of `workers` partitions; returns how many were moved.

    Run only while holding the spool lock and before any worker starts.
    """
    for i in range(workers):
        partition_dir(root, i).mkdir(parents=True, exist_ok=True)
    moved = 0
    for folder in partitions(root):
        m = _PARTITION.fullmatch(folder.name) if folder != root else None
        if m and int(m[1]) < workers:
            continue
        spool = Spool(folder)
        spool.prepare()  # unfinished writes (never answered 250) go first
        names = set(os.listdir(folder))
        ids = queue_ids(names)
        for n, queue_id in enumerate(ids):
            target = partition_dir(root, (moved + n) % workers)
            if queue_id + MESSAGE not in names and queue_id + BODY not in names:
                target = _message_home(root, workers, queue_id) or target
            for suffix in (MESSAGE, BODY, STATE):  # the message before its state
                name = queue_id + suffix
                if name in names:
                    os.replace(folder / name, target / name)
                    fsync_dir(target)
            fsync_dir(folder)
        moved += len(ids)
        for name in names:
            if name.endswith(FREE):  # emptied files kept for reuse: nothing in them
                (folder / name).unlink(missing_ok=True)
        if folder != root and not any(folder.iterdir()):
            folder.rmdir()
    if moved:
        log.info("spool: handed %d message(s) of earlier workers to %d worker(s)", moved,
                 workers)
    return moved


def _message_home(root: Path, workers: int, queue_id: str) -> Path | None:
    """The partition a message was moved to before a crash left its state behind."""
    for i in range(workers):
        folder = partition_dir(root, i)
        if any((folder / (queue_id + suffix)).exists() for suffix in (MESSAGE, BODY)):
            return folder
    return None


def envelopes(root: Path) -> Iterator[Envelope]:
    """Every message in every partition (for `queue list`)."""
    for folder in partitions(root):
        yield from Spool(folder).load_all()


def owner(root: Path, queue_id: str) -> tuple[int | None, Spool] | None:
    """The partition holding a message: (worker index or None for the root, its Spool)."""
    if "/" in queue_id or queue_id.startswith("."):
        return None
    for folder in partitions(root):
        spool = Spool(folder)
        if spool.holds(queue_id):
            m = _PARTITION.fullmatch(folder.name) if folder != root else None
            return (int(m[1]) if m else None), spool
    return None
