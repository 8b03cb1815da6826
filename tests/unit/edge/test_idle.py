"""The idle timeout counts the client's silence, not the time the gateway takes to answer.

A real listener (GatewaySMTP with the real Handler) in the test's loop, on a spool whose
commit (the fsync before the 250) is slower than the session's timeout, as a stalled disk
makes it: the client that sent its final dot is waiting for us, and must get its 250.
"""

from __future__ import annotations

import asyncio
import ipaddress
import smtplib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import TagsConfig
from gateway.edge.handler import Handler
from gateway.edge.limits import ConnectionLimits
from gateway.edge.protocol import GatewaySMTP
from gateway.spool.store import Spool

TIMEOUT = 0.5
STALL = 3 * TIMEOUT
CLOSING = 421
MESSAGE = b"From: a@brondby.dk\r\nTo: b@hotmail.dk\r\nSubject: hej\r\n\r\nhej\r\n"


class StalledSpool(Spool):
    """A spool whose commits take STALL seconds, as behind a disk that stalls."""

    async def commit(self, *args, **kwargs) -> None:
        await asyncio.sleep(STALL)
        await super().commit(*args, **kwargs)


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    spool = StalledSpool(tmp_path / "spool")
    spool.prepare()
    handler = Handler(spool, [ipaddress.ip_network("127.0.0.0/8")], TagsConfig(),
                      lambda _: None)
    limits = ConnectionLimits("gw.test", max_connections=10, max_per_client=10)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: GatewaySMTP(handler, hostname="gw.test", decode_data=False, limits=limits,
                            timeout=TIMEOUT, loop=loop),
        "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def send_then_idle(port: int) -> tuple[tuple[int, bytes], float, int]:
    """The reply to the final dot, then how long the idle session lasted and its code."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@brondby.dk")
        client.rcpt("b@hotmail.dk")
        reply = client.data(MESSAGE)
        started = time.monotonic()
        code, _ = client.getreply()  # nothing sent: the idle timeout's 421
        return reply, time.monotonic() - started, code


async def test_a_slow_commit_is_not_the_client_idling(port: int):
    (code, text), idle, closing = await asyncio.to_thread(send_then_idle, port)
    assert code == 250, text
    assert closing == CLOSING
    assert TIMEOUT * 0.8 < idle < STALL  # the idle time starts from the 250, not before
