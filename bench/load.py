"""The load generator: SMTP sessions in lockstep (like smtp-source), timing every message.

Each message carries `X-Bench-Id: <case>-<n>` at its top so the sink can tell which one
arrived when. A session sends MAIL, RCPT, DATA and the body and waits for each reply
(no PIPELINING, as smtp-source), so both servers see the same conversation. The accept
latency of a message runs from its MAIL command to the 250 after its final dot.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    """One message to send: the envelope and the content (CRLF lines, not dot-stuffed)."""

    sender: str
    recipients: tuple[str, ...]
    header: bytes  # the header fields, each ending in CRLF, without X-Bench-Id
    body: bytes


@dataclass
class Outcome:
    """What the generator saw: per message id, when it was sent and accepted."""

    sent: dict[str, float] = field(default_factory=dict)  # id -> time.time() at MAIL
    accepted: dict[str, float] = field(default_factory=dict)  # id -> time.time() at 250
    refused: dict[str, str] = field(default_factory=dict)  # id -> the reply
    errors: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    def accept_latencies(self) -> list[float]:
        return sorted(self.accepted[i] - self.sent[i] for i in self.accepted)


def stuff(content: bytes) -> bytes:
    """Dot-stuff (RFC 5321 4.5.2) and terminate the content for DATA."""
    if content.startswith(b"."):
        content = b"." + content
    content = content.replace(b"\r\n.", b"\r\n..")
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return content + b".\r\n"


class SmtpError(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise SmtpError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def _expect(reader: asyncio.StreamReader, code: int, what: str) -> None:
    got, text = await _reply(reader)
    if got != code:
        raise SmtpError(f"{what}: {text.decode(errors='replace').strip()}")


async def _session(host: str, port: int, work: asyncio.Queue[tuple[str, Message]],
                   outcome: Outcome, tls: ssl.SSLContext | None) -> None:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        await _expect(reader, 220, "greeting")
        writer.write(b"EHLO load.bench.example\r\n")
        await _expect(reader, 250, "EHLO")
        if tls is not None:
            writer.write(b"STARTTLS\r\n")
            await _expect(reader, 220, "STARTTLS")
            await writer.start_tls(tls, server_hostname="localhost")
            writer.write(b"EHLO load.bench.example\r\n")
            await _expect(reader, 250, "EHLO")
        while not work.empty():
            queue_id, message = work.get_nowait()
            data = stuff(message.header.replace(b"\r\n", f"\r\nX-Bench-Id: {queue_id}\r\n"
                                                .encode(), 1) + b"\r\n" + message.body)
            outcome.sent[queue_id] = time.time()
            writer.write(f"MAIL FROM:<{message.sender}>\r\n".encode())
            await _expect(reader, 250, "MAIL")
            for rcpt in message.recipients:
                writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
                await _expect(reader, 250, "RCPT")
            writer.write(b"DATA\r\n")
            await _expect(reader, 354, "DATA")
            writer.write(data)
            code, text = await _reply(reader)
            if code == 250:
                outcome.accepted[queue_id] = time.time()
            else:
                outcome.refused[queue_id] = text.decode(errors="replace").strip()
        writer.write(b"QUIT\r\n")
        await writer.drain()
        await _reply(reader)
    finally:
        writer.close()


async def drive(host: str, port: int, case: str, messages: list[Message], sessions: int,
                tls: ssl.SSLContext | None = None) -> Outcome:
    """Send `messages` over `sessions` parallel sessions; ids are `<case>-<n>`."""
    work: asyncio.Queue[tuple[str, Message]] = asyncio.Queue()
    for n, message in enumerate(messages):
        work.put_nowait((f"{case}-{n}", message))
    outcome = Outcome(started=time.time())
    results = await asyncio.gather(
        *(_session(host, port, work, outcome, tls) for _ in range(min(sessions, len(messages)))),
        return_exceptions=True)
    outcome.finished = time.time()
    outcome.errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    return outcome
