"""The SMTP DATA writer: the message sent in pieces, dot-stuffed piece by piece.

RFC 5321 4.5.2: a line that starts with "." gets another one; 4.1.1.4: the data ends
with CRLF "." CRLF; 2.3.8: lines end in CRLF only, so a bare CR or LF is sent as CRLF.
This is what aiosmtplib's `SMTP.data` does to a message in one piece (and copies it
twice for it); `DotStuffer` does the same to any split of it, so a 25 MB body read from
the spool in chunks is never held whole. What crosses a boundary between pieces is
carried over: a CR at the end of a piece (it may be half of a CRLF) and whether the
next piece starts a line. `send_data` keeps aiosmtplib for the session and its replies
and only writes the text itself, waiting for the transport to drain after each piece;
`send_text` is its second half, for a DATA that went out in a pipelined group (RFC 2920).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable

import aiosmtplib
from aiosmtplib.protocol import SMTPProtocol
from aiosmtplib.response import SMTPResponse

_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")  # aiosmtplib's, a lone CR or LF too
_PERIOD = re.compile(rb"(?m)^\.")
START_INPUT = 354
COMPLETED = 250


class DotStuffer:
    """Turns the pieces of a message into DATA text; `end` gives the last of it."""

    def __init__(self) -> None:
        self._cr = False  # the last piece ended in a CR that a LF may still follow
        self._line_start = True  # what was sent ends a line (or nothing was sent yet)
        self._sent = False

    def feed(self, piece: bytes) -> bytes:
        if not piece:
            return b""
        if self._cr:
            piece = b"\r" + piece
        self._cr = piece.endswith(b"\r")
        if self._cr:
            piece = piece[:-1]
        return self._stuff(_crlf(piece))

    def end(self) -> bytes:
        """The rest: a held CR as CRLF, CRLF if the last line had none, and the dot."""
        text = self._stuff(b"\r\n") if self._cr else b""
        self._cr = False
        if not (self._sent and self._line_start):
            text += b"\r\n"
        return text + b".\r\n"

    def _stuff(self, text: bytes) -> bytes:
        if not text:
            return text
        # Most text has no line that starts with a dot: two searches in C, not the regex.
        dotted = text.startswith(b".") or b"\n." in text
        stuffed = _PERIOD.sub(b"..", text) if dotted else text
        if not self._line_start and text.startswith(b"."):
            stuffed = stuffed[1:]  # "^" matched where a line goes on from the last piece
        self._line_start = text.endswith(b"\n")
        self._sent = True
        return stuffed


def _crlf(text: bytes) -> bytes:
    """`text` with every lone CR or LF as CRLF.

    Mail that came by SMTP is CRLF throughout: three counts in C find that, and the
    text goes on as it is, without the regular expression trying every byte.
    """
    if text.count(b"\n") == text.count(b"\r") == text.count(b"\r\n"):
        return text
    return _LINE_ENDINGS.sub(b"\r\n", text)


async def send_data(client: aiosmtplib.SMTP, pieces: AsyncIterable[bytes], *,
                    wait: float | None) -> SMTPResponse:
    """DATA, the message, the final dot; the server's reply (SMTPDataError unless 250).

    `wait` bounds the 354, every wait for the transport to drain, and the final reply
    (RFC 5321 4.5.3.2.5-6). A lost or timed-out connection is closed, as aiosmtplib does.
    """
    response = await client.execute_command(b"DATA", timeout=wait)
    if response.code != START_INPUT:
        raise data_refused(response)
    return await send_text(client, pieces, wait=wait)


def data_refused(response: SMTPResponse) -> aiosmtplib.SMTPResponseException:
    """What a DATA reply other than 354 means: SMTPDataError for a refusal (4xx, 5xx).

    Any other reply (a 250 as if the message had come) is out of step with the
    conversation: an SMTPResponseException, which ends the session as a lost one.
    """
    if response.code >= 400:
        return aiosmtplib.SMTPDataError(response.code, response.message)
    return aiosmtplib.SMTPResponseException(
        response.code, f"{response.code} {response.message} was the reply to DATA")


async def send_text(client: aiosmtplib.SMTP, pieces: AsyncIterable[bytes] | None, *,
                    wait: float | None) -> SMTPResponse:
    """After a 354: the message and the final dot; the reply, as `send_data` gives it.

    The last piece goes out in one write with the dot, so a small message is one write.
    `pieces` None sends the dot alone: what ends a transaction the server opened for no
    recipient (RFC 2920 3.1).
    """
    protocol = client.protocol
    try:
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        # A reply the server sends before the dot (552, 421) is kept for read_response,
        # as aiosmtplib's own DATA marks it expected before writing the message.
        protocol._response_pending = True
        held = b""  # the stuffed text of the piece read last, sent once the next is known
        if pieces is not None:
            stuffer = DotStuffer()
            async for piece in pieces:
                if held:
                    protocol.write(held)
                    await _drained(protocol, wait)
                held = stuffer.feed(piece)
            held += stuffer.end()
        else:
            held = b".\r\n"
        protocol._response_pending = True
        protocol.write(held)
        response = await protocol.read_response(timeout=wait)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if response.code != COMPLETED:
        raise aiosmtplib.SMTPDataError(response.code, response.message)
    return response


async def _drained(protocol: SMTPProtocol, wait: float | None) -> None:
    """The transport's flow control: wait while its buffer is past the high-water mark."""
    try:
        await asyncio.wait_for(protocol._drain_helper(), wait)
    except TimeoutError:
        raise aiosmtplib.SMTPTimeoutError("Timed out sending the message") from None
    except ConnectionError as e:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost") from e
