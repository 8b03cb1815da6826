"""The spool on disk: each message's body written once, and a small JSON state beside it.

A message is durable when both files are written, fsynced, renamed into place and the
folder is fsynced; only then does the edge answer 250 (RFC 5321 6.1). Messages that
arrive together are committed in one round (group commit): one hop to a thread writes
all their files, fsyncs them side by side (the file system's journal folds concurrent
fsyncs into few commits), renames them and fsyncs the folder once. All disk work runs
in threads so one slow write never stalls other sessions. A finished message is
unlinked without a folder fsync, as Postfix does: after a power cut it may come back
and be delivered twice, which RFC 5321 6.1 prefers to losing one; the unlinks of
messages that finish together go in one hop too.

A body arriving over SMTP is taken as it comes (`Incoming`): held in memory while it is
small, streamed into its temporary file once it is not, so a large message never sits
whole in memory. Bodies of recent messages stay in a bounded cache for their first
delivery attempt, which then needs no read from disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gateway.model import Envelope
from gateway.observe import metrics
from gateway.spool.body import MessageData, open_spooled

log = logging.getLogger(__name__)

BODY = ".eml"
STATE = ".json"
TMP = ".tmp"
LOCK = ".lock"
QUARANTINE = "quarantine"
STREAM_AT = 1 << 20  # bytes of a new body held in memory before it goes to its file
HEAD = 65536  # bytes of a new body kept for reading its header fields
CACHE_BYTES = 32 << 20  # bodies of recent messages kept for their first attempt
_FSYNCS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-fsync")


class SpoolError(Exception):
    """The spool could not be written: the message is not accepted.

    `full` when the disk (or the quota) has no room: RFC 3463 4.3.1, not a fault.
    """

    def __init__(self, text: str, full: bool = False) -> None:
        super().__init__(text)
        self.full = full


class SpoolBusy(Exception):
    """Another process holds the spool."""


def new_id() -> str:
    """A queue id that sorts by arrival time and never repeats."""
    return f"{time.time_ns() // 1000:014X}{secrets.token_hex(3).upper()}"


class GroupSync:
    """fsync a folder once for every writer that asked while the previous round ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next: asyncio.Future[None] | None = None
        self._running: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        waiter = self._next
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._rounds())
        await waiter

    async def _rounds(self) -> None:
        try:
            while self._next is not None:
                batch, self._next = self._next, None
                try:
                    await asyncio.to_thread(fsync_dir, self.path)
                except OSError as e:
                    batch.set_exception(SpoolError(f"fsync of {self.path} failed: {e}"))
                else:
                    batch.set_result(None)
        finally:
            self._running = None


@dataclass
class _Write:
    """One new message waiting for the next commit round.

    `body_fd` is the open temporary file of a body streamed so far (-1: none yet);
    `data` is what is still to be written to it.
    """

    queue_id: str
    data: bytes
    state: bytes
    done: asyncio.Future[None]
    body_fd: int = -1


class GroupCommit:
    """Writes every new message that arrives while the previous round runs in one round."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[_Write] = []
        self._running: asyncio.Task[None] | None = None

    async def put(self, queue_id: str, data: bytes, state: bytes, body_fd: int = -1) -> None:
        loop = asyncio.get_running_loop()
        write = _Write(queue_id, data, state, loop.create_future(), body_fd)
        self._pending.append(write)
        if self._running is None:
            self._running = loop.create_task(self._rounds())
        await write.done

    async def _rounds(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    failures = await asyncio.to_thread(_commit, self.path, batch)
                except OSError as e:  # the folder fsync: nothing in the round is durable
                    failures = [e] * len(batch)
                for write, failure in zip(batch, failures, strict=True):
                    if failure is None:
                        write.done.set_result(None)
                    else:
                        write.done.set_exception(failure)
        finally:
            self._running = None


def _commit(folder: Path, batch: list[_Write]) -> list[OSError | None]:
    """Write, fsync, rename, fsync the folder; a failure per message (None: durable)."""
    failures: list[OSError | None] = [None] * len(batch)
    files: list[tuple[int, Path, Path, int]] = []  # message index, temporary, final, fd
    for i, write in enumerate(batch):
        # The body goes first: a state file always has its body.
        for name, data in ((write.queue_id + BODY, write.data),
                           (write.queue_id + STATE, write.state)):
            tmp = folder / (name + TMP)
            if name.endswith(BODY) and write.body_fd >= 0:
                fd = write.body_fd  # streamed: the file is open, its start written
            else:
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                except OSError as e:
                    failures[i] = e
                    break
            files.append((i, tmp, folder / name, fd))
            try:
                _write_all(fd, data)
            except OSError as e:
                failures[i] = e
                break

    def sync(entry: tuple[int, Path, Path, int]) -> OSError | None:
        try:
            os.fsync(entry[3])
        except OSError as e:
            return e
        return None

    for entry, error in zip(files, _FSYNCS.map(sync, files), strict=True):
        os.close(entry[3])
        if error is not None and failures[entry[0]] is None:
            failures[entry[0]] = error
    for i, tmp, final, _ in files:
        if failures[i] is None:
            try:
                os.replace(tmp, final)
            except OSError as e:
                failures[i] = e
        if failures[i] is not None:
            tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    return failures


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: Path) -> None:
    """Make the names in a folder durable (a rename is not, until its folder is fsynced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync it and rename it into place."""
    tmp = path.with_name(path.name + TMP)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves nothing half-written behind
        raise


class Incoming:
    """The body of a message being received, taken as it arrives (`Spool.incoming`).

    Small bodies stay in memory and are written by the commit round; from STREAM_AT on,
    what has come is appended to the body's temporary file in a thread. A failed write
    is kept (`error`) and the rest of the body dropped, so the client can still be read
    to its end and told; `Spool.commit` raises it, `discard` removes what was written.
    """

    def __init__(self, folder: Path, queue_id: str) -> None:
        self.queue_id = queue_id
        self.size = 0
        self.head = b""  # the first HEAD bytes: the header fields
        self.error: OSError | None = None
        self._tmp = folder / (queue_id + BODY + TMP)
        self._parts: list[bytes] = []
        self._held = 0
        self._fd = -1
        self._appending: asyncio.Future[None] | None = None

    @property
    def streamed(self) -> bool:
        return self._fd >= 0

    async def write(self, data: bytes) -> None:
        if len(self.head) < HEAD:
            self.head += data[:HEAD - len(self.head)]
        self.size += len(data)
        if self.error is not None:
            return
        self._parts.append(data)
        self._held += len(data)
        if self._held >= STREAM_AT:
            parts, self._parts, self._held = self._parts, [], 0
            # Shielded: a session cancelled meanwhile (the client hung up) discards the
            # body while the thread may still be opening or writing its file.
            self._appending = asyncio.ensure_future(asyncio.to_thread(self._append, parts))
            try:
                await asyncio.shield(self._appending)
            except OSError as e:
                self.error = e

    def _append(self, parts: list[bytes]) -> None:
        if self._fd < 0:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        for part in parts:
            _write_all(self._fd, part)

    def take(self) -> tuple[bytes, int]:
        """What is held in memory and the open file (-1: none), for the commit round."""
        data = b"".join(self._parts)
        self._parts, self._held = [], 0
        fd, self._fd = self._fd, -1
        return data, fd

    def discard(self) -> None:
        """Forget the body (no 250 will be given): close and remove its temporary file,
        once a write still running in its thread has finished."""
        self._parts, self._held = [], 0
        if self._appending is not None and not self._appending.done():
            self._appending.add_done_callback(self._remove_after)
        else:
            self._remove()

    def _remove_after(self, appending: asyncio.Future[None]) -> None:
        if not appending.cancelled():
            appending.exception()  # taken: the body is forgotten anyway
        self._remove()

    def _remove(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            self._tmp.unlink(missing_ok=True)


class BodyCache:
    """Bodies of recently spooled messages, oldest forgotten first past CACHE_BYTES."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self._bodies: dict[str, bytes] = {}
        self._bytes = 0

    def add(self, queue_id: str, data: bytes) -> None:
        if len(data) > self.limit // 8:
            return
        self._bodies[queue_id] = data
        self._bytes += len(data)
        while self._bytes > self.limit:
            oldest = next(iter(self._bodies))
            self._bytes -= len(self._bodies.pop(oldest))

    def get(self, queue_id: str) -> bytes | None:
        return self._bodies.get(queue_id)

    def drop(self, queue_id: str) -> None:
        data = self._bodies.pop(queue_id, None)
        if data is not None:
            self._bytes -= len(data)


class GroupRemove:
    """Unlinks the files of every message finished while the previous round ran, in one hop."""

    def __init__(self) -> None:
        self._pending: list[Path] = []
        self._next: asyncio.Future[None] | None = None
        self._running: asyncio.Task[None] | None = None

    async def remove(self, paths: list[Path]) -> None:
        loop = asyncio.get_running_loop()
        self._pending += paths
        if self._next is None:
            self._next = loop.create_future()
        waiter = self._next
        if self._running is None:
            self._running = loop.create_task(self._rounds())
        await waiter

    async def _rounds(self) -> None:
        try:
            while self._pending:
                paths, self._pending = self._pending, []
                batch, self._next = self._next, None
                assert batch is not None
                try:
                    await asyncio.to_thread(_unlink_all, paths)
                except OSError as e:
                    batch.set_exception(e)
                else:
                    batch.set_result(None)
        finally:
            self._running = None


def _unlink_all(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class Spool:
    """The message store. Paths: DIR/<id>.eml (body) and DIR/<id>.json (envelope, state)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._sync = GroupSync(directory)
        self._commit = GroupCommit(directory)
        self._remove = GroupRemove()
        self._recent = BodyCache()
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Claim the spool for this process; SpoolBusy when another one holds it.

        Two daemons on one spool would deliver every message twice. The lock is an
        flock on DIR/.lock and goes away with the process, however it ends.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(f"another send-sikkert process is using {self.dir}") from None
        self._lock_fd = fd

    @property
    def lock_fd(self) -> int | None:
        """The locked descriptor: workers inherit it, so the lock lasts while any of them runs."""
        return self._lock_fd

    def prepare(self) -> None:
        """Create the folder and clear writes that never finished (no 250 was given)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self.dir.iterdir():
            if path.name.endswith(TMP):
                path.unlink(missing_ok=True)
            elif path.suffix == BODY and not path.with_suffix(STATE).exists():
                log.warning("removing %s: its envelope was never written", path.name)
                path.unlink(missing_ok=True)

    def writable(self) -> bool:
        return os.access(self.dir, os.W_OK | os.X_OK)

    def incoming(self, queue_id: str) -> Incoming:
        """A body to be received for a new message `queue_id` (then `commit` or discard)."""
        return Incoming(self.dir, queue_id)

    async def put(self, envelope: Envelope, data: bytes) -> None:
        """Make a new message durable; SpoolError when it could not be."""
        await self._put(envelope, data, -1)

    async def commit(self, envelope: Envelope, body: Incoming) -> None:
        """Make a message whose body was received as `body` durable; SpoolError if not."""
        if body.error is not None:
            body.discard()
            raise SpoolError(f"cannot write {envelope.id}: {body.error}",
                             full=_full(body.error))
        streamed = body.streamed
        data, fd = body.take()
        await self._put(envelope, data, fd, cache=not streamed)

    async def _put(self, envelope: Envelope, data: bytes, body_fd: int,
                   cache: bool = True) -> None:
        started = time.perf_counter()
        state = _encode(envelope)
        try:
            await self._commit.put(envelope.id, data, state, body_fd)
        except (OSError, SpoolError) as e:
            # No 250 will be given: take the message back out, the client sends it again.
            await asyncio.to_thread(self._discard, envelope.id)
            full = isinstance(e, OSError) and _full(e)
            raise SpoolError(f"cannot write {envelope.id}: {e}", full=full) from e
        if cache:
            self._recent.add(envelope.id, data)
        metrics.spool_write_seconds.observe(time.perf_counter() - started)

    def _discard(self, queue_id: str) -> None:
        for suffix in (STATE, BODY):
            with contextlib.suppress(OSError):
                (self.dir / (queue_id + suffix)).unlink(missing_ok=True)

    async def update(self, envelope: Envelope) -> None:
        """Replace a message's state atomically (the body is never rewritten)."""
        path = self.dir / (envelope.id + STATE)
        await asyncio.to_thread(_write_durable, path, _encode(envelope))
        await self._sync.sync()

    async def remove(self, queue_id: str) -> None:
        """Forget a finished message: state first, so a crash never leaves a bodiless state.

        No folder fsync (see the module's docstring): the journal keeps the two unlinks
        in order, and at worst the message is delivered again.
        """
        self._recent.drop(queue_id)
        await self._remove.remove([self.dir / (queue_id + STATE), self.dir / (queue_id + BODY)])

    async def body(self, queue_id: str) -> bytes:
        cached = self._recent.get(queue_id)
        if cached is not None:
            return cached
        return await asyncio.to_thread((self.dir / (queue_id + BODY)).read_bytes)

    async def message(self, queue_id: str) -> MessageData:
        """The message for a delivery attempt: in memory, or from STREAM_AT bytes on its
        header block only, the body left in its file (spool/body.py)."""
        cached = self._recent.get(queue_id)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self._message, self.dir / (queue_id + BODY))

    @staticmethod
    def _message(path: Path) -> MessageData:
        if path.stat().st_size < STREAM_AT:
            return path.read_bytes()
        return open_spooled(path) or path.read_bytes()

    def read(self, queue_id: str) -> Envelope | None:
        """One message's envelope, read straight from disk (for the queue commands)."""
        path = self.dir / (queue_id + STATE)
        if "/" in queue_id or not path.exists():
            return None
        return _decode(path)

    def load_all(self) -> list[Envelope]:
        """Every spooled message, oldest first.

        A record that cannot be read is moved with its body to DIR/quarantine/ for a
        person to look at, and logged; the rest of the queue goes on.
        """
        envelopes = []
        for path in sorted(self.dir.glob("*" + STATE)):
            try:
                if not path.with_suffix(BODY).exists():
                    raise ValueError("its message body is missing")
                envelopes.append(_decode(path))
            except (OSError, ValueError, TypeError, KeyError) as e:
                self._quarantine(path, e)
        return envelopes

    def _quarantine(self, path: Path, error: Exception) -> None:
        folder = self.dir / QUARANTINE
        try:
            folder.mkdir(exist_ok=True)
            for part in (path.with_suffix(BODY), path):
                if part.exists():
                    os.replace(part, folder / part.name)
            fsync_dir(folder)
            fsync_dir(self.dir)
        except OSError as e:
            log.error("cannot read spool record %s (%s), nor move it to %s: %s; left in "
                      "place", path.name, error, folder, e)
            return
        log.error("cannot read spool record %s: %s; moved with its body to %s", path.name,
                  error, folder)


def _full(error: OSError) -> bool:
    """No room on the disk or in the quota: RFC 3463 4.3.1, not a fault."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _encode(envelope: Envelope) -> bytes:
    # Compact: json's C encoder does not indent (indenting costs ten times as much).
    return json.dumps(envelope.to_json(), ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def _decode(path: Path) -> Envelope:
    return Envelope.from_json(json.loads(path.read_bytes()))
