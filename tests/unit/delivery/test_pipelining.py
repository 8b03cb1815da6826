"""RFC 2920 PIPELINING on the way out: one write per command group, its replies in order.

A scripted hop answers a group only once all of it (up to DATA) has come, one write per
reply, so a client that waited for each reply would hang, and one that lost replies
arriving apart would fail; Postfix's smtp-sink and aiosmtpd (`test_smtp.py`, run with
PIPELINING off and on) are the others.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtplib.email import quote_address
from hypothesis import given
from hypothesis import strategies as st

from gateway.delivery import Rcpt, Result, TlsPolicy, parse_route
from gateway.delivery.smtp import SmtpTransport, _address
from tests.support.ports import free_port

OK = 250
TEMPFAIL = 451
BUSY = 450
BAD_MAILBOX = 550
START_INPUT = 354
BAD_SEQUENCE = 503
NO_RECIPIENTS = "554 5.5.1 Error: no valid recipients"
NO_SUCH_USER = "550 5.1.1 no such user"
SENDER_REFUSED = "550 5.7.1 sender refused"
DROP = "drop"  # instead of a reply: the hop closes the connection
HANG = "hang"  # instead of a reply: the hop says nothing more

MESSAGE = b"From: anna@brondby.test\r\nSubject: Hej\r\n\r\n.Tekst.\r\n"
ONE, TWO, THREE = (Rcpt(f"{name}@partner.test") for name in ("one", "two", "three"))


@dataclass
class Scripted:
    """A hop offering PIPELINING that replies to a group only after its DATA has come.

    `replies` maps a command (its first 4 letters, or "RCPT <address>") to a reply line,
    DROP or HANG; anything else gets a 250, DATA a 354. What each connection sent is kept in
    `received`, one entry per group: the command lines, then the message text if any.
    With `pipelining` off it does not offer it, and each command is a group of its own.
    """

    replies: dict[str, str] = field(default_factory=dict)
    extra: str = ""  # a reply line no command asked for, in one write with the last reply
    pipelining: bool = True
    received: list[list[bytes]] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        writer.write(b"220 scripted.test ESMTP\r\n")
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        assert line.startswith(b"EHLO")
        offer = b"250-PIPELINING\r\n" if self.pipelining else b""
        writer.write(b"250-scripted.test\r\n" + offer + b"250 SIZE 1000000\r\n")
        while True:
            group: list[bytes] = []
            while not group or (self.pipelining and group[-1] not in (b"DATA", b"QUIT")):
                line = await reader.readline()
                if not line:
                    return
                group.append(line.rstrip(b"\r\n"))
            self.received.append(group)
            answers = [self._reply(command) for command in group]  # as things stand now
            for i, reply in enumerate(answers, 1):
                if reply == DROP:
                    return
                if reply == HANG:
                    await reader.read()
                    return
                text = reply + "\r\n"
                if i == len(answers) and group[-1] == b"DATA" and self.extra:
                    text += self.extra + "\r\n"
                writer.write(text.encode())
                await writer.drain()  # one write each, apart
                await asyncio.sleep(0.005)
            if group[-1] == b"QUIT":
                return
            if answers[-1].startswith("354"):
                text = [await reader.readline()]
                while text[-1] not in (b".\r\n", b""):
                    text.append(await reader.readline())
                if text[-1] == b"":  # the client closed the connection instead
                    return
                group.append(b"".join(text))
                writer.write(b"250 2.0.0 queued\r\n")

    def _reply(self, command: bytes) -> str:
        text = command.decode()
        verb = text[:4].upper()
        if verb == "RCPT":
            address = text.partition("<")[2].partition(">")[0]
            reply = self.replies.get(f"RCPT {address}")
            if reply is not None:
                return reply
        if verb == "QUIT":
            return "221 2.0.0 bye"
        return self.replies.get(verb, "354 go ahead" if verb == "DATA" else "250 2.0.0 ok")


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    hop = Scripted()
    server = await asyncio.start_server(hop.handle, "127.0.0.1", 0)
    hop.port = server.sockets[0].getsockname()[1]
    async with server:
        yield hop
        for writer in hop.writers:
            writer.close()
        await asyncio.sleep(0.05)  # the handlers see the close and end


@pytest.fixture
async def transport() -> AsyncIterator[SmtpTransport]:
    transport = SmtpTransport("gw.brondby.test", timeout=5, connect_timeout=2)
    yield transport


async def send(transport: SmtpTransport, port: int, *rcpts: Rcpt) -> Result:
    return await transport.deliver(parse_route(f"smtp://127.0.0.1:{port}"), "partner.test",
                                   "anna@brondby.test", rcpts or (ONE,), MESSAGE,
                                   TlsPolicy("may"), queue_id="Q1")


def codes(result: Result) -> dict[str, int]:
    return {address: reply.code for address, reply in result.replies.items()}


def verbs(group: list[bytes]) -> list[bytes]:
    return [line[:4] for line in group if not line.endswith(b".\r\n")]


async def test_a_group_is_answered_in_order_with_its_replies_apart(
        transport: SmtpTransport, scripted: Scripted) -> None:
    scripted.replies["RCPT two@partner.test"] = NO_SUCH_USER
    result = await send(transport, scripted.port, ONE, TWO, THREE)
    assert codes(result) == {"one@partner.test": OK, "two@partner.test": BAD_MAILBOX,
                             "three@partner.test": OK}
    assert result.replies["two@partner.test"].status == "5.1.1"
    [group] = scripted.received
    assert verbs(group) == [b"MAIL", b"RCPT", b"RCPT", b"RCPT", b"DATA"]
    assert group[-1] == b"From: anna@brondby.test\r\nSubject: Hej\r\n\r\n..Tekst.\r\n.\r\n"


async def test_the_rset_of_a_reused_session_goes_with_the_next_group(
        transport: SmtpTransport, scripted: Scripted) -> None:
    assert [codes(await send(transport, scripted.port)) for _ in range(3)] == [
        {"one@partner.test": OK}] * 3
    assert scripted.connections == 1
    assert [verbs(g) for g in scripted.received] == [
        [b"MAIL", b"RCPT", b"DATA"], [b"RSET", b"MAIL", b"RCPT", b"DATA"],
        [b"RSET", b"MAIL", b"RCPT", b"DATA"]]


async def test_a_354_without_an_accepted_recipient_gets_a_lone_dot(
        transport: SmtpTransport, scripted: Scripted) -> None:
    """RFC 2920 3.1: the client must check the DATA reply; after a 354 it sends a dot."""
    scripted.replies.update({"RCPT one@partner.test": NO_SUCH_USER,
                             "RCPT two@partner.test": "450 4.2.1 mailbox busy"})
    result = await send(transport, scripted.port, ONE, TWO)
    assert codes(result) == {"one@partner.test": BAD_MAILBOX, "two@partner.test": BUSY}
    [group] = scripted.received
    assert group[-1] == b".\r\n"  # no message text at all
    scripted.replies.clear()
    assert codes(await send(transport, scripted.port)) == {"one@partner.test": OK}
    assert scripted.connections == 1  # the session stays usable


async def test_a_refused_data_after_refused_recipients_sends_no_text(
        transport: SmtpTransport, scripted: Scripted) -> None:
    scripted.replies.update({"RCPT one@partner.test": NO_SUCH_USER, "DATA": NO_RECIPIENTS})
    result = await send(transport, scripted.port)
    assert codes(result) == {"one@partner.test": BAD_MAILBOX}
    assert result.replies["one@partner.test"].status == "5.1.1"  # the RCPT's, not DATA's
    [group] = scripted.received
    assert verbs(group) == [b"MAIL", b"RCPT", b"DATA"] and len(group) == 3


async def test_a_refused_sender_is_every_recipients_reply(
        transport: SmtpTransport, scripted: Scripted) -> None:
    scripted.replies.update({"MAIL": SENDER_REFUSED, "RCPT": "503 5.5.1 need MAIL",
                             "DATA": "503 5.5.1 need RCPT"})
    result = await send(transport, scripted.port, ONE, TWO)
    assert {(r.code, r.status) for r in result.replies.values()} == {(BAD_MAILBOX, "5.7.1")}
    scripted.replies.clear()
    assert codes(await send(transport, scripted.port)) == {"one@partner.test": OK}
    assert scripted.connections == 1


async def test_a_data_refusal_is_the_accepted_recipients_reply(
        transport: SmtpTransport, scripted: Scripted) -> None:
    scripted.replies.update({"RCPT two@partner.test": NO_SUCH_USER,
                             "DATA": "451 4.3.0 try again later"})
    result = await send(transport, scripted.port, ONE, TWO)
    assert codes(result) == {"one@partner.test": TEMPFAIL, "two@partner.test": BAD_MAILBOX}
    assert result.replies["one@partner.test"].status == "4.3.0"


async def test_a_connection_dropped_within_a_group_defers_what_had_no_reply(
        transport: SmtpTransport, scripted: Scripted) -> None:
    scripted.replies.update({"RCPT two@partner.test": NO_SUCH_USER,
                             "RCPT three@partner.test": DROP})
    result = await send(transport, scripted.port, ONE, TWO, THREE)
    assert codes(result) == {"one@partner.test": TEMPFAIL, "two@partner.test": BAD_MAILBOX,
                             "three@partner.test": TEMPFAIL}
    assert result.replies["one@partner.test"].status == "4.4.2"  # accepted, but no DATA
    assert len(scripted.received[0]) == 5  # no message text after the drop
    scripted.replies.clear()
    assert codes(await send(transport, scripted.port)) == {"one@partner.test": OK}
    assert scripted.connections == 2


async def test_a_reused_session_the_hop_drops_at_rset_is_replaced(
        transport: SmtpTransport, scripted: Scripted) -> None:
    assert codes(await send(transport, scripted.port)) == {"one@partner.test": OK}
    scripted.replies["RSET"] = DROP
    assert codes(await send(transport, scripted.port)) == {"one@partner.test": OK}
    assert scripted.connections == 2
    assert [verbs(g) for g in scripted.received][1:] == [
        [b"RSET", b"MAIL", b"RCPT", b"DATA"], [b"MAIL", b"RCPT", b"DATA"]]


async def test_a_reused_session_refusing_rset_is_replaced_without_the_message(
        transport: SmtpTransport, scripted: Scripted) -> None:
    assert codes(await send(transport, scripted.port)) == {"one@partner.test": OK}
    scripted.replies["RSET"] = "421 4.3.2 shutting down"
    assert codes(await send(transport, scripted.port)) == {"one@partner.test": OK}
    assert scripted.connections == 2
    stale, fresh = scripted.received[1:]
    assert len(stale) == 4  # the 354 of the refused session got no message text
    assert fresh[-1].endswith(b"\r\n.\r\n")


@pytest.mark.parametrize("pipelining", [False, True], ids=["lockstep", "pipelining"])
async def test_a_data_answered_as_if_it_were_the_message_is_not_delivered(
        transport: SmtpTransport, scripted: Scripted, pipelining: bool) -> None:
    # Out of step, or a broken hop: only a 250 after the message text means delivered.
    scripted.pipelining = pipelining
    scripted.replies["DATA"] = "250 2.0.0 ok"
    result = await send(transport, scripted.port)
    assert {(r.code, r.status) for r in result.replies.values()} == {(TEMPFAIL, "4.4.2")}


async def test_a_reply_nobody_asked_for_closes_the_session(
        transport: SmtpTransport, scripted: Scripted) -> None:
    scripted.extra = "250 2.0.0 surplus"
    result = await send(transport, scripted.port)
    assert {(r.code, r.status) for r in result.replies.values()} == {(TEMPFAIL, "4.4.2")}
    assert len(scripted.received[0]) == 3  # out of step: no message text, and closed


@pytest.mark.serial
async def test_a_hop_silent_within_a_group_times_out(scripted: Scripted) -> None:
    quick = SmtpTransport("gw.brondby.test", timeout=0.3, connect_timeout=2, data_timeout=0.3)
    scripted.replies["RCPT two@partner.test"] = HANG
    result = await send(quick, scripted.port, ONE, TWO)
    assert {(r.code, r.status) for r in result.replies.values()} == {(TEMPFAIL, "4.4.2")}
    assert len(scripted.received[0]) == 4


_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~.-"
_TRICKY = _ATEXT + ' "<>()[]\\,;:@\t\xe6'


@given(st.text(_TRICKY, max_size=12), st.text(_ATEXT + "@ <>", max_size=12))
def test_addresses_go_on_the_command_line_as_aiosmtplib_writes_them(local: str,
                                                                      domain: str) -> None:
    address = f"{local}@{domain}"
    try:
        expected = quote_address(address).encode("utf-8")
    except ValueError:
        expected = None
    try:
        written = _address(address, "utf-8")
    except ValueError:
        written = None
    assert written == expected


# Postfix's smtp-sink: a real server that offers PIPELINING.

@dataclass
class Sink:
    port: int
    dumps: Path  # one file per message


@pytest.fixture
def smtp_sink() -> Iterator[Callable[..., Sink]]:
    """Starts smtp-sink with the options given, on a free port, dumping every message."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as folder:  # not below pytest's, which is private

        def start(*options: str) -> Sink:
            dumps = Path(folder) / str(len(procs))
            dumps.mkdir(mode=0o755)
            Path(folder).chmod(0o755)
            port = free_port()
            command = ["smtp-sink", "-d", f"{dumps}/m.", "-t", "30", *options]
            if os.geteuid() == 0:  # it will not run as root
                user = "nobody" if _user("nobody") else "postfix"
                shutil.chown(dumps, user)
                command += ["-u", user]
            procs.append(subprocess.Popen([*command, f"127.0.0.1:{port}", "64"],
                                          stdout=subprocess.DEVNULL))
            return Sink(port, dumps)

        try:
            yield start
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


def _user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


async def wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return
    raise TimeoutError(f"smtp-sink does not listen on {port}")


async def test_smtp_sink_takes_pipelined_groups_over_one_session(
        transport: SmtpTransport, smtp_sink: Callable[..., Sink]) -> None:
    sink = smtp_sink()
    await wait_listening(sink.port)
    results = [await send(transport, sink.port, ONE, TWO, THREE) for _ in range(5)]
    assert [set(codes(r).values()) for r in results] == [{OK}] * 5
    await transport.sessions.close()
    files = sorted(sink.dumps.iterdir())
    assert len(files) == 5
    for path in files:
        dump = path.read_bytes().replace(b"\r\n", b"\n")
        assert dump.count(b"X-Rcpt-Args: ") == 3
        assert b"\nFrom: anna@brondby.test\nSubject: Hej\n\n.Tekst.\n" in dump


async def test_smtp_sink_dropping_the_connection_at_rcpt_defers_all(
        transport: SmtpTransport, smtp_sink: Callable[..., Sink]) -> None:
    sink = smtp_sink("-q", "RCPT")
    await wait_listening(sink.port)
    result = await send(transport, sink.port, ONE, TWO)
    assert {(r.code, r.status) for r in result.replies.values()} == {(TEMPFAIL, "4.4.2")}
    # smtp-sink may have opened a dump for the transaction at MAIL: nothing of the message
    assert not [p for p in sink.dumps.iterdir() if b"Subject: Hej" in p.read_bytes()]


async def test_smtp_sink_closing_at_rset_gets_the_message_a_new_session(
        transport: SmtpTransport, smtp_sink: Callable[..., Sink]) -> None:
    sink = smtp_sink("-Q", "RSET")  # 421 and hang up
    await wait_listening(sink.port)
    assert [codes(await send(transport, sink.port)) for _ in range(3)] == [
        {"one@partner.test": OK}] * 3
    assert len(list(sink.dumps.iterdir())) == 3
