"""What the edge does around the spool's commit: a 250 for every message made durable,
and no file left behind for one that was not. A real listener (GatewaySMTP with the real
Handler and spool) in the test's loop, and smtplib clients."""

from __future__ import annotations

import asyncio
import ipaddress
import smtplib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.config import TagsConfig
from gateway.edge.handler import Handler
from gateway.edge.protocol import GatewaySMTP
from gateway.model import Envelope
from gateway.spool.store import Incoming, Spool

OK = 250
TAGGED = (b"From: lela@brondby.dk\r\nTo: b@hotmail.dk\r\nX-Send-Sikkert: ja\r\n"
          b"Subject: hej\r\n\r\nhej\r\n")


class UnnamableDepartment:
    """A department whose id cannot be read: naming it in the log fails unforeseen."""

    @property
    def id(self) -> str:
        raise RuntimeError("a bug while naming the department")


class CommitFails(Spool):
    """A spool whose commit fails with an error nobody foresaw, after the body arrived."""

    async def commit(self, envelope: Envelope, body: Incoming) -> None:
        raise RuntimeError("a bug before the commit")




@pytest.fixture
async def listen() -> AsyncIterator[Callable[..., object]]:
    servers: list[asyncio.AbstractServer] = []

    async def start(spool: Spool, accepted: list[Envelope], departments=()) -> int:
        handler = Handler(spool, [ipaddress.ip_network("127.0.0.0/8")], TagsConfig(),
                          accepted.append, departments)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: GatewaySMTP(handler, hostname="gw.test", decode_data=False, loop=loop),
            "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def send(port: int, data: bytes) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("exchange.brondby.dk")
        client.mail("lela@brondby.dk")
        client.rcpt("b@hotmail.dk")
        code, _ = client.data(data)
        return code


async def test_a_durable_message_is_answered_250_when_its_log_line_fails(listen, tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    accepted: list[Envelope] = []
    port = await listen(spool, accepted, (UnnamableDepartment(),))
    assert await asyncio.to_thread(send, port, TAGGED) == OK
    [queued] = accepted  # handed on for delivery, not left to the next restart
    assert (tmp_path / "spool" / f"{queued.id}.msg").exists()


async def test_a_hook_that_fails_before_its_commit_leaves_no_file(listen, tmp_path: Path):
    spool = CommitFails(tmp_path / "spool")
    spool.prepare()
    accepted: list[Envelope] = []
    port = await listen(spool, accepted)
    large = TAGGED + (b"y" * 998 + b"\r\n") * 3000  # 3 MB: streamed to a file on disk
    assert await asyncio.to_thread(send, port, large) != OK
    assert accepted == []
    assert list((tmp_path / "spool").iterdir()) == []
