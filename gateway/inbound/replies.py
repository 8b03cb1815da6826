"""Remember who sent each secure mail, so that an encrypted reply reaches that person.

With `replies = "department"` the partner answers the department mailbox, the only
address it has a certificate for. The gateway remembers the Message-ID of every S/MIME
mail it sends for such a department and who sent it; a decrypted reply whose
In-Reply-To or References names one goes to that person (CONTRACT "Inbound",
"Routing replies"). Entries older than the retention period no longer count and are
pruned.

`ReplyMap` is the interface (files here; PostgreSQL with `cluster.database`).
`FileReplyMap` keeps one small JSON file per mail, named by the SHA-256 of its
Message-ID (the identifier itself is not kept), in 256 subfolders, written atomically:

    <reply_map>/3f/3fa4...e1.json   {"sender": "lela@brondby.dk", "department": "aeldreomsorg",
                                     "sent": 1767225600}
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gateway.cluster import reply_map
from gateway.config import Config
from gateway.inbound.receive import DECRYPTED, Inbound
from gateway.policy.address import domain_matches, domain_of
from gateway.policy.departments import Department

if TYPE_CHECKING:
    from gateway.cluster.database import Database

log = logging.getLogger(__name__)


class ReplyMapUnavailable(Exception):
    """The map cannot be read or written: a reply waits in the queue and is retried."""


@dataclass(frozen=True)
class Sent:
    """Who sent a secure mail, through which department, when (Unix time)."""

    sender: str
    department: str
    sent: float


class ReplyMap(Protocol):
    """Message-ID of a secure mail sent -> who sent it."""

    async def remember(self, message_id: str, sent: Sent) -> None:
        """Keep the entry; ReplyMapUnavailable when it cannot be written."""
        ...

    async def find(self, message_ids: Sequence[str]) -> Sent | None:
        """The entry of the first of `message_ids` that is known and not expired."""
        ...

    async def prune(self) -> int:
        """Forget the entries past the retention period; how many were removed."""
        ...

    async def close(self) -> None:
        ...


async def reply_targets(received: Inbound, address: str, departments: Sequence[Department],
                        replies: ReplyMap | None, internal_domains: Sequence[str]) -> list[str]:
    """Where the copy for `address` goes: `[address]`, or for a decrypted reply to the mailbox
    of a `replies = "department"` department, the person who sent the mail it answers (and
    the mailbox too with `reply_copy`). ReplyMapUnavailable when the map cannot be read.
    """
    if received.result != DECRYPTED or not received.replied_to or replies is None:
        return [address]
    department = next((d for d in departments if d.mailbox == address.lower()
                       and d.config.replies == "department"), None)
    if department is None:
        return [address]
    sent = await replies.find(received.replied_to)
    if sent is None or sent.department != department.id:
        return [address]
    # Mail from outside never leaves through a routed reply.
    if not domain_matches(domain_of(sent.sender), tuple(internal_domains)):
        log.warning("reply to %s not routed: its sender <%s> is not internal", address,
                    sent.sender)
        return [address]
    return [sent.sender, address] if department.config.reply_copy else [sent.sender]


def message_key(message_id: str) -> str:
    """The Message-ID as compared: without angle brackets and surrounding space."""
    return message_id.strip().removeprefix("<").removesuffix(">").strip()


def message_digest(message_id: str) -> bytes:
    """What is kept of a Message-ID: the SHA-256 of its message_key(), never the identifier."""
    return hashlib.sha256(message_key(message_id).encode("utf-8", "replace")).digest()


def open_reply_map(config: Config, database: Database | None = None) -> ReplyMap | None:
    """The map `inbound.reply_map` names, or the one in `database` for a cluster; None when
    no department routes replies."""
    if database is not None and any(d.replies == "department" for d in config.departments):
        return reply_map(database, config.inbound.reply_retention)
    if config.inbound.reply_map is None:
        return None
    return FileReplyMap(config.inbound.reply_map, config.inbound.reply_retention)


class FileReplyMap:
    """The reply map as files (see the module docstring)."""

    def __init__(self, root: Path, retention: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.retention = retention
        self.clock = clock

    def _path(self, message_id: str) -> Path:
        digest = message_digest(message_id).hex()
        return self.root / digest[:2] / f"{digest}.json"

    async def remember(self, message_id: str, sent: Sent) -> None:
        if not message_key(message_id):
            return
        record = json.dumps({"sender": sent.sender, "department": sent.department,
                             "sent": round(sent.sent)}).encode("utf-8")
        try:
            await asyncio.to_thread(_write, self._path(message_id), record)
        except OSError as e:
            raise ReplyMapUnavailable(f"{self.root}: {e.strerror or e}") from None

    async def find(self, message_ids: Sequence[str]) -> Sent | None:
        try:
            return await asyncio.to_thread(self._find, list(message_ids))
        except OSError as e:
            raise ReplyMapUnavailable(f"{self.root}: {e.strerror or e}") from None

    def _find(self, message_ids: list[str]) -> Sent | None:
        oldest = self.clock() - self.retention
        for message_id in message_ids:
            path = self._path(message_id)
            try:
                data = json.loads(path.read_bytes())
                sent = Sent(str(data["sender"]), str(data["department"]), float(data["sent"]))
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError) as e:
                log.warning("reply map: skipping unreadable %s: %s", path, e)
                continue
            if sent.sent >= oldest:
                return sent
        return None

    async def prune(self) -> int:
        try:
            return await asyncio.to_thread(self._prune)
        except OSError as e:
            raise ReplyMapUnavailable(f"{self.root}: {e.strerror or e}") from None

    def _prune(self) -> int:
        """Remove files older than the retention period, judged by their mtime."""
        oldest = self.clock() - self.retention
        removed = 0
        if not self.root.exists():
            return 0
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.glob("*.json"):
                try:
                    if path.stat().st_mtime < oldest:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    continue
        if removed:
            log.info("reply map: forgot %d entr%s past the retention period", removed,
                     "y" if removed == 1 else "ies")
        return removed

    async def close(self) -> None:
        return None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
