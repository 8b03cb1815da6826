"""The spool on disk: one file per message, written once; a state file only once it changes.

A new message is one file, DIR/<id>.msg: the message as received, then its envelope as
it arrived (compact JSON) and a fixed footer with both lengths and a CRC-32. It is
written and made durable (`durable`), and its folder fsynced; only then does the edge answer 250
(RFC 5321 6.1). A file whose footer is missing, or does not fit the file's length, was
never finished (no 250 was given) and is removed at start; one whose CRC does not
match is quarantined for a person. When a delivery attempt changes the state,
DIR/<id>.json is written beside it (temporary file, fsync, rename, folder fsync) and
from then on wins over the envelope in the message file. Spools written before this
layout, DIR/<id>.eml (the message) with DIR/<id>.json, are read, delivered and removed
the same way.

Few inodes matter here: every new inode costs a scan of the inode bitmap (on ext4
without a journal it skips every inode deleted in the last minutes), so file churn
costs more the faster mail arrives. So the file of a finished message is not unlinked
but emptied and renamed DIR/<id>.free, and the next new message is written into it and
renamed into place once it is durable. It is emptied before the state goes: a state
beside an emptied file is a finished message whose removal a crash cut short (taken
away at start), never one to deliver again. Messages that arrive together are committed
in one round (group commit): one hop to a thread writes all their files, makes them
durable together (one syncfs, or an fsync each: `spool.sync`), fsyncs the folder once, and
takes away the messages finished meanwhile. A finished
message goes without a folder fsync of its own, as Postfix does: after a power cut it
may come back and be delivered twice, which RFC 5321 6.1 prefers to losing one.

A body arriving over SMTP is taken as it comes (`Incoming`): held in memory while it is
small, streamed into its message file once it is not, so a large message never sits
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
import re
import secrets
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.model import Envelope
from gateway.observe import metrics
from gateway.spool import durable
from gateway.spool.body import MessageData, read_spooled

log = logging.getLogger(__name__)

MESSAGE = ".msg"  # the message, its envelope as it arrived, the footer
STATE = ".json"  # the envelope once a delivery attempt changed it
BODY = ".eml"  # the message, in spools written before MESSAGE files (always with a STATE)
FREE = ".free"  # the emptied file of a finished message, for a new one to be written into
TMP = ".tmp"
LOCK = ".lock"
QUARANTINE = "quarantine"
STREAM_AT = 1 << 20  # bytes of a new body held in memory before it goes to its file
HEAD = 65536  # bytes of a new body kept for reading its header fields
CACHE_BYTES = 32 << 20  # bodies of recent messages kept for their first attempt
FREE_MAX = 256  # emptied message files kept per folder for reuse
MAGIC = b"send-sikkert-spool-1"
_FOOTER = re.compile(rb"\n" + re.escape(MAGIC) + rb" ([0-9a-f]{16}) ([0-9a-f]{8}) ([0-9a-f]{8})\n")


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


def footer(size: int, envelope: int, crc: int) -> bytes:
    """The last bytes of a message file: the message's and the envelope's lengths, and the
    CRC-32 of both; written last, so a file without it was never finished."""
    return b"\n%s %016x %08x %08x\n" % (MAGIC, size, envelope, crc)


FOOTER_SIZE = len(footer(0, 0, 0))


@dataclass(frozen=True)
class Footer:
    size: int  # bytes of the message, from the start of the file
    envelope: int  # bytes of the envelope after it
    crc: int


def read_footer(fd: int) -> Footer | None:
    """The footer of the open message file `fd`; None when the file was never finished."""
    length = os.fstat(fd).st_size
    if length < FOOTER_SIZE:
        return None
    m = _FOOTER.fullmatch(os.pread(fd, FOOTER_SIZE, length - FOOTER_SIZE))
    if m is None:
        return None
    found = Footer(int(m[1], 16), int(m[2], 16), int(m[3], 16))
    return found if found.size + found.envelope + FOOTER_SIZE == length else None


def queue_ids(names: Iterable[str]) -> list[str]:
    """The messages among a folder's file names, oldest first (ids sort by arrival)."""
    ids = set()
    for name in names:
        for suffix in (MESSAGE, STATE):
            if name.endswith(suffix):
                ids.add(name[: -len(suffix)])
    return sorted(ids)


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

    `fd` is the open message file of a body streamed so far (-1: none yet), `crc` the
    CRC-32 of what was written to it; `data` is the rest of the message, `size` all of it.
    `free` is the emptied file of a finished message it is written into, if one was left.
    """

    queue_id: str
    data: bytes
    envelope: bytes
    size: int
    done: asyncio.Future[None]
    fd: int = -1
    crc: int = 0
    free: Path | None = None


@dataclass
class _Finish:
    """A finished message: its message file to empty and keep (or unlink), and its state
    file (None: it never had one, spooled by this process and never updated)."""

    message: Path
    state: Path | None


class GroupCommit:
    """One thread hop per round: writes every new message that arrived while the previous
    round ran, and takes away the files of every message finished meanwhile.

    The message files of finished messages are emptied and kept (DIR/<old id>.free, at
    most FREE_MAX) for new messages to be written into and renamed: no inode is freed or
    allocated for the messages that pass through.
    """

    def __init__(self, path: Path, sync: str) -> None:
        self.path, self.sync = path, sync
        self.free: list[Path] = []  # emptied files, ready to be written into
        self._writes: list[_Write] = []
        self._finishes: list[_Finish] = []
        self._finished: asyncio.Future[None] | None = None
        self._running: asyncio.Task[None] | None = None

    async def put(self, write: _Write) -> None:
        self._writes.append(write)
        self._start()
        await write.done

    async def finish(self, finish: _Finish) -> None:
        self._finishes.append(finish)
        if self._finished is None:
            self._finished = asyncio.get_running_loop().create_future()
        waiter = self._finished
        self._start()
        await waiter

    def _start(self) -> None:
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._rounds())

    async def _rounds(self) -> None:
        try:
            while self._writes or self._finishes:
                writes, self._writes = self._writes, []
                finishes, self._finishes = self._finishes, []
                finished, self._finished = self._finished, None
                for write in writes:
                    if write.fd < 0 and self.free:
                        write.free = self.free.pop()
                keep = max(0, FREE_MAX - len(self.free))
                try:
                    failures, finish_error, freed = await asyncio.to_thread(
                        _commit, self.path, self.sync, writes, finishes, keep)
                except Exception as e:  # unforeseen: no 250, and nobody waits forever
                    error = e if isinstance(e, OSError) else OSError(f"spool commit: {e!r}")
                    failures, finish_error, freed = [error] * len(writes), error, []
                self.free += freed
                for write, failure in zip(writes, failures, strict=True):
                    if failure is None:
                        write.done.set_result(None)
                    else:
                        write.done.set_exception(failure)
                if finished is not None:
                    if finish_error is None:
                        finished.set_result(None)
                    else:
                        finished.set_exception(finish_error)
        finally:
            self._running = None


def _commit(folder: Path, sync: str, writes: list[_Write], finishes: list[_Finish],
            keep: int) -> tuple[list[OSError | None], OSError | None, list[Path]]:
    """Take finished messages away (emptying up to `keep` of their files for reuse), then
    write each new message file, make them durable (`durable.sync`), give each its name
    and fsync the folder once.

    Returns a failure per message (None: durable), the first failure to take a finished
    message away, and the files emptied for reuse.
    """
    finish_error: OSError | None = None
    freed: list[Path] = []
    for finish in finishes:
        try:
            free = _take_away(finish, len(freed) < keep)
        except OSError as e:
            finish_error = finish_error or e
        else:
            if free is not None:
                freed.append(free)
    if not writes:
        return [], finish_error, freed
    failures: list[OSError | None] = [None] * len(writes)
    folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # before the writes: see sync
    fds = [-1] * len(writes)
    try:
        for i, write in enumerate(writes):
            try:
                fds[i] = write.fd if write.fd >= 0 else os.open(
                    write.free or folder / (write.queue_id + MESSAGE),
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                crc = zlib.crc32(write.envelope, zlib.crc32(write.data, write.crc))
                _write_all(fds[i], b"".join((write.data, write.envelope,
                                             footer(write.size, len(write.envelope), crc))))
            except OSError as e:
                failures[i] = e
        durable.sync(sync, folder_fd, fds, failures,
                     frozenset(i for i, write in enumerate(writes) if write.fd >= 0))
        for i, write in enumerate(writes):
            path = folder / (write.queue_id + MESSAGE)
            if failures[i] is None and write.free is not None:
                try:
                    os.rename(write.free, path)  # whole and durable before it has its name
                except OSError as e:
                    failures[i] = e
            if fds[i] >= 0:
                with contextlib.suppress(OSError):  # durable or failed already: nothing to add
                    os.close(fds[i])
            if failures[i] is not None:
                # A full disk leaves nothing half-written behind.
                for left in (write.free, path):
                    if left is not None:
                        with contextlib.suppress(OSError):
                            left.unlink(missing_ok=True)
        try:
            os.fsync(folder_fd)
        except OSError as e:  # nothing in the round is durable
            failures = [e] * len(writes)
    finally:
        os.close(folder_fd)
    return failures, finish_error, freed


def _take_away(finish: _Finish, keep: bool) -> Path | None:
    """Take a finished message's files away; returns its emptied file if kept for reuse.

    The message file is emptied before the state goes, so a crash in between leaves a
    state beside an empty or .free file, which the next start takes as finished
    (`Spool.prepare`). The other order would leave the message file alone, with the
    envelope it arrived with: every recipient would be delivered to again.
    """
    message, state = finish.message, finish.state
    if state is None and not keep:
        message.unlink(missing_ok=True)
        return None
    try:
        os.truncate(message, 0)  # delivered mail is not kept on the disk
    except FileNotFoundError:  # the two-file layout (or a message already gone)
        if state is not None:  # the state first: a body alone is dropped at start
            state.unlink(missing_ok=True)
            message.with_suffix(BODY).unlink(missing_ok=True)
        return None
    free = message.with_suffix(FREE) if keep else None
    if free is not None:
        os.rename(message, free)
    if state is not None:
        state.unlink(missing_ok=True)
    if free is None:
        message.unlink()  # emptied, so a crash before this leaves no message behind
    return free


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
    what has come is appended to the message file in a thread (it has no footer until
    the commit round writes the envelope after it). A failed write is kept (`error`) and
    the rest of the body dropped, so the client can still be read to its end and told;
    `Spool.commit` raises it, `discard` removes what was written.
    """

    def __init__(self, folder: Path, queue_id: str) -> None:
        self.queue_id = queue_id
        self.size = 0
        self.head = b""  # the first HEAD bytes: the header fields
        self.error: OSError | None = None
        self._path = folder / (queue_id + MESSAGE)
        self._parts: list[bytes] = []
        self._held = 0
        self._fd = -1
        self._crc = 0  # of what was appended to the file
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
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        for part in parts:
            _write_all(self._fd, part)
            self._crc = zlib.crc32(part, self._crc)

    def take(self) -> tuple[bytes, int, int]:
        """What is held in memory, the open file (-1: none) and the CRC-32 of what is in
        it, for the commit round."""
        data = b"".join(self._parts)
        self._parts, self._held = [], 0
        fd, self._fd = self._fd, -1
        return data, fd, self._crc

    def discard(self) -> None:
        """Forget the body (no 250 will be given): close and remove its file, once a write
        still running in its thread has finished."""
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
            self._path.unlink(missing_ok=True)


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


@dataclass
class Scan:
    """What a reading of the spool found: the messages, oldest first, and each record that
    could not be read (its folder / its queue id: why)."""

    envelopes: list[Envelope] = field(default_factory=list)
    unreadable: dict[Path, Exception] = field(default_factory=dict)


class Spool:
    """The message store: DIR/<id>.msg (message and envelope), DIR/<id>.json (the state
    once it changed); DIR/<id>.eml with DIR/<id>.json from older versions."""

    def __init__(self, directory: Path, sync: str = durable.FILESYSTEM) -> None:
        """`sync`: `spool.sync`, how new messages are made durable (`durable`)."""
        self.dir = directory
        self._sync = GroupSync(directory)
        self._commit = GroupCommit(directory, durable.effective(sync))
        self._recent = BodyCache()
        self._fresh: set[str] = set()  # spooled here and never updated: no state file
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

    def prepare(self, verify: bool = True) -> None:
        """Create the folder, clear writes that never finished (no 250 was given) and
        removals a crash cut short.

        A message file without a state is checked whole: without its footer it was never
        finished and goes; with a footer but the wrong CRC it is quarantined. `verify`
        False leaves that to the folder the messages are moved to (a rebalance), so none
        is read twice. A state beside an emptied message file is what a removal leaves
        when cut short after emptying it (`_take_away`): the message was finished, and
        its state goes. A state without any message file is quarantined (a rebalance
        has put every state found elsewhere beside its message before).
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        names = set(os.listdir(self.dir))
        for name in sorted(names):
            path = self.dir / name
            stem, suffix = os.path.splitext(name)
            if name.endswith(TMP):
                path.unlink(missing_ok=True)
            elif suffix == FREE:
                self._keep_free(path)
            elif suffix == STATE and self._emptied(stem, names):
                log.info("removing %s: its message was finished before a crash", name)
                path.unlink(missing_ok=True)
                names.discard(name)  # an empty message file left goes as never finished
            elif suffix == STATE and stem + MESSAGE not in names and stem + BODY not in names:
                self._quarantine(stem, ValueError("its message body is missing"))
            elif suffix == BODY and stem + STATE not in names:
                log.warning("removing %s: its envelope was never written", name)
                path.unlink(missing_ok=True)
            elif suffix == MESSAGE and stem + STATE not in names and verify:
                problem = _check(path)
                if problem == "unfinished":
                    log.warning("removing %s: it was never finished", name)
                    path.unlink(missing_ok=True)
                elif problem:
                    self._quarantine(stem, ValueError(problem))

    def _emptied(self, queue_id: str, names: set[str]) -> bool:
        """Whether the message file of a message with a state was emptied (or kept as
        .free): the message was finished."""
        if queue_id + FREE in names:
            return True
        return queue_id + MESSAGE in names and (
            os.stat(self.dir / (queue_id + MESSAGE)).st_size == 0)

    def _keep_free(self, path: Path) -> None:
        """An emptied file left from before: kept for reuse (emptied again: a crash may
        have come between a new message's write and its rename), or unlinked."""
        if len(self._commit.free) < FREE_MAX:
            os.truncate(path, 0)
            self._commit.free.append(path)
        else:
            path.unlink(missing_ok=True)

    def writable(self) -> bool:
        return os.access(self.dir, os.W_OK | os.X_OK)

    def incoming(self, queue_id: str) -> Incoming:
        """A body to be received for a new message `queue_id` (then `commit` or discard)."""
        return Incoming(self.dir, queue_id)

    async def put(self, envelope: Envelope, data: bytes) -> None:
        """Make a new message durable; SpoolError when it could not be."""
        await self._put(envelope, data, len(data))

    async def commit(self, envelope: Envelope, body: Incoming) -> None:
        """Make a message whose body was received as `body` durable; SpoolError if not."""
        if body.error is not None:
            body.discard()
            raise SpoolError(f"cannot write {envelope.id}: {body.error}",
                             full=_full(body.error))
        streamed = body.streamed
        data, fd, crc = body.take()
        await self._put(envelope, data, body.size, fd, crc, cache=not streamed)

    async def _put(self, envelope: Envelope, data: bytes, size: int, fd: int = -1,
                   crc: int = 0, cache: bool = True) -> None:
        started = time.perf_counter()
        write = _Write(envelope.id, data, _encode(envelope), size,
                       asyncio.get_running_loop().create_future(), fd, crc)
        try:
            await self._commit.put(write)
        except OSError as e:
            # No 250 will be given: take the message back out, the client sends it again.
            with contextlib.suppress(OSError):  # the client is told 451/452 all the same
                await asyncio.to_thread((self.dir / (envelope.id + MESSAGE)).unlink,
                                        missing_ok=True)
            raise SpoolError(f"cannot write {envelope.id}: {e}", full=_full(e)) from e
        self._fresh.add(envelope.id)
        if cache:
            self._recent.add(envelope.id, data)
        metrics.spool_write_seconds.observe(time.perf_counter() - started)

    async def update(self, envelope: Envelope) -> None:
        """Replace a message's state atomically (the message is never rewritten)."""
        path = self.dir / (envelope.id + STATE)
        self._fresh.discard(envelope.id)
        await asyncio.to_thread(_write_durable, path, _encode(envelope))
        await self._sync.sync()

    async def remove(self, queue_id: str) -> None:
        """Forget a finished message: its message file emptied first, then its state.

        No folder fsync (see the module's docstring): after a power cut the message may
        be delivered again. A message this process spooled and never updated has no state
        file, so none is unlinked (a system call fewer for most messages).
        """
        self._recent.drop(queue_id)
        state = None if queue_id in self._fresh else self.dir / (queue_id + STATE)
        self._fresh.discard(queue_id)
        await self._commit.finish(_Finish(self.dir / (queue_id + MESSAGE), state))

    async def body(self, queue_id: str) -> bytes:
        cached = self._recent.get(queue_id)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self._read, queue_id)

    def _read(self, queue_id: str) -> bytes:
        data = self._load(queue_id, stream=False)
        assert isinstance(data, bytes)
        return data

    async def message(self, queue_id: str) -> MessageData:
        """The message for a delivery attempt: in memory, or from STREAM_AT bytes on its
        header block only, the body left in its file (spool/body.py)."""
        cached = self._recent.get(queue_id)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self._load, queue_id, True)

    def _load(self, queue_id: str, stream: bool) -> MessageData:
        """The message from its file, opened once for its footer and its bytes; with
        `stream`, from STREAM_AT bytes on as a Spooled. OSError when there is none."""
        path = self.dir / (queue_id + MESSAGE)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            path = self.dir / (queue_id + BODY)
            fd = os.open(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            if path.suffix == BODY:
                size = os.fstat(fd).st_size
            else:
                found = read_footer(fd)
                if found is None:
                    raise OSError(errno.EIO, "the message file was never finished", str(path))
                size = found.size
            if stream and size >= STREAM_AT:
                spooled = read_spooled(f, path, size)
                if spooled is not None:
                    return spooled
                f.seek(0)
            return f.read(size)

    def holds(self, queue_id: str) -> bool:
        """Whether a message with this id is in this folder."""
        return not ("/" in queue_id or queue_id.startswith(".")) and any(
            (self.dir / (queue_id + suffix)).exists() for suffix in (STATE, MESSAGE))

    def read(self, queue_id: str) -> Envelope | None:
        """One message's envelope, read straight from disk (for the queue commands)."""
        if "/" in queue_id or queue_id.startswith("."):
            return None
        try:
            return _decode((self.dir / (queue_id + STATE)).read_bytes())
        except FileNotFoundError:
            pass
        try:
            return _embedded(self.dir / (queue_id + MESSAGE))
        except FileNotFoundError:
            return None

    def load_all(self) -> list[Envelope]:
        """Every spooled message, oldest first, for a process holding the spool's lock.

        A record that cannot be read is moved with its message to DIR/quarantine/ for a
        person to look at, and logged; the rest of the queue goes on.
        """
        result = self.scan()
        for record, error in result.unreadable.items():
            self._quarantine(record.name, error)
        return result.envelopes

    def scan(self) -> Scan:
        """Every spooled message, oldest first, and every record that cannot be read;
        changes nothing, so a listing may run beside the daemon (a record it meets in
        the middle of a change must not be moved away under the daemon).

        A message file still being written (no footer yet) is not a message yet and is
        passed over, and so is a state without its message file: a finished message
        whose .free file a folder listing may miss while it is renamed, or one a crash
        left apart from its message in another partition, which `prepare` sees to at
        the next start.
        """
        result = Scan()
        names = set(os.listdir(self.dir))
        for queue_id in queue_ids(names):
            try:
                if queue_id + STATE in names:
                    if queue_id + MESSAGE not in names and queue_id + BODY not in names:
                        continue  # not a message here: `prepare` sees to it at start
                    envelope = _decode((self.dir / (queue_id + STATE)).read_bytes())
                else:
                    found = _embedded(self.dir / (queue_id + MESSAGE))
                    if found is None:
                        continue
                    envelope = found
                if envelope.id != queue_id:
                    raise ValueError(f"it holds the envelope of {envelope.id}")
                result.envelopes.append(envelope)
            except FileNotFoundError:
                continue  # finished and removed while the folder was read
            except (OSError, ValueError, TypeError, KeyError) as e:
                result.unreadable[self.dir / queue_id] = e
        return result

    def _quarantine(self, queue_id: str, error: Exception) -> None:
        folder = self.dir / QUARANTINE
        try:
            folder.mkdir(exist_ok=True)
            for suffix in (MESSAGE, BODY, STATE):
                part = self.dir / (queue_id + suffix)
                if part.exists():
                    os.replace(part, folder / part.name)
            fsync_dir(folder)
            fsync_dir(self.dir)
        except OSError as e:
            log.error("cannot read spool record %s (%s), nor move it to %s: %s; left in "
                      "place", queue_id, error, folder, e)
            return
        log.error("cannot read spool record %s: %s; moved with its message to %s", queue_id,
                  error, folder)


def _check(path: Path) -> str:
    """What is wrong with a message file: "" nothing, "unfinished" (no footer, or one
    that does not fit its length: no 250 was given) or why it is corrupt."""
    with open(path, "rb") as f:
        found = read_footer(f.fileno())
        if found is None:
            return "its footer is damaged" if _damaged_footer(f.fileno()) else "unfinished"
        crc, left = 0, found.size + found.envelope
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                return "unfinished"
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    return "" if crc == found.crc else "its CRC-32 does not match its contents"


def _damaged_footer(fd: int) -> bool:
    """The footer was written (its magic is there) but does not read: a 250 may have been
    given, so the message goes to a person, not away."""
    length = os.fstat(fd).st_size
    tail = os.pread(fd, FOOTER_SIZE, max(0, length - FOOTER_SIZE))
    return MAGIC in tail and _FOOTER.fullmatch(tail) is None


def _embedded(path: Path) -> Envelope | None:
    """The envelope written with the message; None when the file was never finished."""
    with open(path, "rb") as f:
        found = read_footer(f.fileno())
        if found is None:
            return None
        return _decode(os.pread(f.fileno(), found.envelope, found.size))


def _full(error: OSError) -> bool:
    """No room on the disk or in the quota: RFC 3463 4.3.1, not a fault."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _encode(envelope: Envelope) -> bytes:
    # Compact: json's C encoder does not indent (indenting costs ten times as much).
    return json.dumps(envelope.to_json(), ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def _decode(data: bytes) -> Envelope:
    return Envelope.from_json(json.loads(data))
