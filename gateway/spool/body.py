"""A large spooled message as delivery sees it: its header block in memory, its body on disk.

Only the header block of a message is ever rewritten on the way out (tags, Bcc: see
`transform.headers`); the body keeps every byte (RFC 5322 2.1, 2.2). So a large message
that is relayed as it is never needs to sit whole in memory: the header block is read
once, and the body is read from the spool file in chunks while it is sent
(`Spooled.pieces`). Whatever needs the whole message (S/MIME, inbound decryption, the
7-bit conversion) asks for it with `whole`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # bytes of a body read and sent at a time
HEAD_MAX = 1 << 20  # a header block longer than this is not streamed: the message is read
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")


class SpoolReadError(Exception):
    """The spool file could not be read while it was being sent: our fault, not the next
    hop's (not an OSError, so delivery never takes it for a lost connection)."""


@dataclass(frozen=True)
class Spooled:
    """A message whose header block (`head`, with the blank line after it) is in memory
    and whose body is the rest of the spool file from `offset`."""

    head: bytes
    path: Path
    offset: int
    body_size: int
    body_ascii: bool  # every byte of the body is 7-bit (RFC 6152: no BODY=8BITMIME needed)

    def __len__(self) -> int:  # like bytes: the size of the whole message (SIZE, RFC 1870)
        return len(self.head) + self.body_size

    def isascii(self) -> bool:  # like bytes
        return self.body_ascii and self.head.isascii()

    def with_head(self, head: bytes) -> Spooled:
        """The same body under another header block (the outgoing one)."""
        return self if head is self.head else replace(self, head=head)

    async def read(self) -> bytes:
        """The whole message, for what cannot work on it piece by piece (a body cut
        short is an error, never signed, encrypted or sent as the message)."""
        try:
            body = await asyncio.to_thread(self._read_body)
        except OSError as e:
            raise SpoolReadError(f"cannot read {self.path}: {e}") from None
        if len(body) != self.body_size:
            raise SpoolReadError(f"{self.path} ended {self.body_size - len(body)} bytes early")
        return self.head + body

    def _read_body(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.body_size)

    def read_pieces(self, size: int = CHUNK) -> Iterator[bytes]:
        """The header block, then the body `size` bytes at a time (blocking: in a thread,
        or in the DLP scan's process); a body cut short is a SpoolReadError."""
        yield self.head
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                left = self.body_size
                while left > 0:
                    chunk = f.read(min(size, left))
                    if not chunk:
                        raise SpoolReadError(f"{self.path} ended {left} bytes early")
                    left -= len(chunk)
                    yield chunk
        except OSError as e:
            raise SpoolReadError(f"cannot read {self.path}: {e}") from None

    async def pieces(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        """`read_pieces`, each piece read in a thread."""
        reader = self.read_pieces(size)
        try:
            while (chunk := await asyncio.to_thread(next, reader, None)) is not None:
                yield chunk
        finally:
            # Cancelled while a thread reads on, the reader is running and cannot be
            # closed here: it closes its file when that read returns and it is let go.
            with contextlib.suppress(ValueError):
                reader.close()


MessageData = bytes | Spooled  # what a transport sends: in memory, or mostly on disk


def read_spooled(f: BinaryIO, path: Path, size: int) -> Spooled | None:
    """The message in the first `size` bytes of `f`, the file at `path` opened and not
    read yet, as a Spooled (blocking: call it in a thread); None when its header block
    does not end within HEAD_MAX bytes, so it is better read whole."""
    start = f.read(min(HEAD_MAX, size))
    m = _END_OF_HEADERS.search(start)
    if m is None:
        return None
    head = start[: m.end()]
    body_ascii = start[m.end():].isascii()
    body_size = len(start) - m.end()
    left = size - len(start)
    del start
    while left > 0 and (chunk := f.read(min(CHUNK, left))):
        body_ascii = body_ascii and chunk.isascii()
        body_size += len(chunk)
        left -= len(chunk)
    return Spooled(head, path, len(head), body_size, body_ascii)


async def whole(data: MessageData) -> bytes:
    """The message as one bytes object."""
    return data if isinstance(data, bytes) else await data.read()


def head_of(data: MessageData) -> bytes:
    """The header block: all that header work reads (the body is never parsed here)."""
    return data.head if isinstance(data, Spooled) else data


async def pieces(data: MessageData, size: int = CHUNK) -> AsyncIterator[bytes]:
    """The message in pieces of about `size` bytes, so no whole copy is made of it."""
    if isinstance(data, Spooled):
        async for piece in data.pieces(size):
            yield piece
        return
    for piece in _slices(data, size):
        yield piece


def _slices(data: bytes, size: int) -> Iterator[bytes]:
    if len(data) <= size:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i:i + size]
