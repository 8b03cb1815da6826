"""RFC 2920 command groups over an aiosmtplib session: one write, every reply read in order.

aiosmtplib reads one reply per command and drops what arrives while a parsed reply waits
to be picked up, so it cannot take the replies to commands sent together. `Group` lends
the session's transport a reader of its own for the time of a group (`set_protocol`):
it writes the commands at once, keeps every byte, parses replies as aiosmtplib does
(multi-line, the code from each line, at most 32 KiB per reply) and hands them out one
by one, the ones that came before a lost connection first. Flow control and the loss of
the connection still reach aiosmtplib's protocol, which gets the transport back when the
group is over, so the message text after a 354 and every later command go through it.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Sequence
from typing import cast

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse

_MAX_LINE = 8192  # aiosmtplib's limits
_MAX_REPLY = 4 * _MAX_LINE
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")  # never on a command line (aiosmtplib's check)
_INVALID = -1  # aiosmtplib's code for a reply that is not one


def command(*words: bytes) -> bytes:
    """One command line; ValueError for a control character, as aiosmtplib refuses it."""
    for word in words:
        if _CONTROL.search(word):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join(words) + b"\r\n"


class _Replies(asyncio.Protocol):
    """Stands in for aiosmtplib's protocol while a group's replies come in."""

    def __init__(self, inner: SMTPProtocol) -> None:
        self.inner = inner
        self.buffer = bytearray()  # an unfinished line
        self.lines: list[bytes] = []  # the lines so far of an unfinished multi-line reply
        self.size = 0
        self.replies: collections.deque[SMTPResponse] = collections.deque()
        self.error: aiosmtplib.SMTPException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        if self.error is not None:
            return
        self.buffer += data
        end = self.buffer.rfind(b"\n") + 1
        if end:
            text = bytes(self.buffer[:end])
            del self.buffer[:end]
            for line in text.split(b"\n")[:-1]:
                self._line(line)
        if len(self.buffer) > _MAX_LINE:
            self._fail(aiosmtplib.SMTPResponseException(_INVALID, "Response too long"))
        self._wake()

    def _line(self, line: bytes) -> None:
        if self.error is not None:
            return
        code = line[:3]
        self.size += len(line)
        if len(line) > _MAX_LINE or self.size > _MAX_REPLY:
            self._fail(aiosmtplib.SMTPResponseException(_INVALID, "Response too long"))
            return
        if len(code) != 3 or not code.isdigit():
            text = line.decode("utf-8", "ignore")
            self._fail(aiosmtplib.SMTPResponseException(
                _INVALID, f"Malformed SMTP response line: {text}"))
            return
        self.lines.append(line[4:].strip(b" \t\r"))
        if line[3:4] != b"-":
            message = b"\n".join(self.lines).decode("utf-8", "surrogateescape")
            self.replies.append(SMTPResponse(int(code), message))
            self.lines, self.size = [], 0

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # the transport closes, and connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))
        self.inner.connection_lost(exc)  # so aiosmtplib's client knows it is closed

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _fail(self, error: aiosmtplib.SMTPException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self, wait: float | None) -> SMTPResponse:
        if not self.replies and self.error is None:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(wait):
                    await self.waiter
            except TimeoutError:
                raise aiosmtplib.SMTPReadTimeoutError(
                    "Timed out waiting for server response") from None
            finally:
                self.waiter = None
        if self.replies:
            return self.replies.popleft()
        assert self.error is not None
        raise self.error


class Group:
    """Commands sent in one write; `reply()` gives their replies in order.

    Use as `async with Group(client, lines) as group:`; at the end the session's
    transport goes back to aiosmtplib. A lost connection, a timeout or a reply that is
    not one raises an `aiosmtplib.SMTPException` from `reply()`, after the replies that
    did come. `in_step` is whether exactly one reply came per command: otherwise the
    session is out of step and must be closed.
    """

    def __init__(self, client: aiosmtplib.SMTP, lines: Sequence[bytes]) -> None:
        self.client = client
        self.lines = lines
        self.read = 0
        self._reader: _Replies | None = None

    async def __aenter__(self) -> Group:
        protocol = self.client.protocol
        transport = protocol.transport if protocol is not None else None
        if protocol is None or transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._reader = _Replies(protocol)
        transport.set_protocol(self._reader)
        try:
            cast(asyncio.WriteTransport, transport).write(b"".join(self.lines))
        except BaseException:
            transport.set_protocol(protocol)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        protocol = self._reader.inner
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            transport.set_protocol(protocol)

    async def reply(self, wait: float | None) -> SMTPResponse:
        """The next command's reply."""
        assert self._reader is not None
        if self.read >= len(self.lines):
            raise RuntimeError("every command of the group has had its reply")
        response = await self._reader.next(wait)
        self.read += 1
        return response

    @property
    def in_step(self) -> bool:
        reader = self._reader
        return (reader is not None and self.read == len(self.lines) and not reader.replies
                and not reader.buffer and not reader.lines and reader.error is None)
