"""The spool split between worker processes: DIR/w0, DIR/w1, ... one folder per worker.

Each worker writes and delivers only the messages in its own folder, so workers never
share a file, a lock or an fsync. The supervisor holds the one lock (DIR/.lock) for all
of them and, before any worker starts, moves every message of a folder no worker will
own (fewer workers than before, or the flat spool of a version without workers) into
the folders of those that will: nothing left behind is ever orphaned. Moving is a
rename of the body first and the state last, each folder fsynced, so a crash halfway
leaves the message file in one folder and its state in another (RFC 5321 6.1: never
lose a message). So before anything is checked or moved, every state is put beside its
message wherever that is: any folder, owned or not, since the number of workers may
have changed in between; apart, one worker would deliver the message again to every
recipient and another quarantine its state.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from gateway.spool.store import BODY, FREE, MESSAGE, STATE, Scan, Spool, fsync_dir, queue_ids

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
    folders = partitions(root)
    _reunite(folders)
    moved = 0
    for folder in folders:
        m = _PARTITION.fullmatch(folder.name) if folder != root else None
        if m and int(m[1]) < workers:
            continue
        # Unfinished writes (never answered 250) and finished removals go first; the
        # CRC of each message is checked once, in the folder it goes to.
        Spool(folder).prepare(verify=False)
        names = set(os.listdir(folder))
        ids = queue_ids(names)
        for n, queue_id in enumerate(ids):
            target = partition_dir(root, (moved + n) % workers)
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


def _reunite(folders: list[Path]) -> None:
    """Move every state file found without its message to the folder holding the
    message (a rebalance cut short by a crash); a state whose message is nowhere stays,
    to be quarantined."""
    listings = {folder: set(os.listdir(folder)) for folder in folders}
    strays = [(folder, name[:-len(STATE)]) for folder, names in listings.items()
              for name in names
              if name.endswith(STATE) and not _with_message(names, name[:-len(STATE)])]
    if not strays:
        return
    homes = {name.rsplit(".", 1)[0]: folder for folder, names in listings.items()
             for name in names if name.endswith((MESSAGE, BODY))}
    for folder, queue_id in strays:
        home = homes.get(queue_id)
        if home is None or queue_id + STATE in listings[home]:
            continue
        os.replace(folder / (queue_id + STATE), home / (queue_id + STATE))
        fsync_dir(home)
        fsync_dir(folder)
        log.info("spool: state of %s moved from %s to its message in %s", queue_id,
                 folder, home)


def _with_message(names: set[str], queue_id: str) -> bool:
    """Whether a folder's names hold a message file for this state (or its emptied file:
    then it is a finished message, taken away by `Spool.prepare`)."""
    return any(queue_id + suffix in names for suffix in (MESSAGE, BODY, FREE))


def scan(root: Path) -> Scan:
    """Every message in every partition, and every record that cannot be read (for `queue
    list`, with or without the daemon: nothing is changed, see `Spool.scan`)."""
    result = Scan()
    for folder in partitions(root):
        found = Spool(folder).scan()
        result.envelopes += found.envelopes
        result.unreadable.update(found.unreadable)
    return result


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
