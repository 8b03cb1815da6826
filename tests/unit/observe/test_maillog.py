"""The mail log's events in both formats: one line each, the same fields, nothing secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest

from gateway.observe import maillog
from tests.support.maillog import events, records

CPR = "0101801234"


class Captured:
    """The gateway's log records written by one formatter into a string."""

    def __init__(self, fmt: str, node: str = "") -> None:
        self.fmt = fmt
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(maillog.JsonFormatter(node) if fmt == "json"
                                  else maillog.TextFormatter(node))

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def events(self) -> list[dict[str, object]]:
        return events(self.text, self.fmt)


@contextmanager
def capture(fmt: str, node: str = "") -> Iterator[Captured]:
    """The gateway's records at INFO and above, written in `fmt`, while the block runs."""
    captured = Captured(fmt, node)
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.addHandler(captured.handler)
    logger.setLevel(logging.INFO)
    try:
        yield captured
    finally:
        logger.removeHandler(captured.handler)
        logger.setLevel(level)


@pytest.fixture(params=["text", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[Captured]:
    with capture(request.param) as captured:
        yield captured


def emit_road() -> None:
    """One message's events, in the order the gateway writes them."""
    maillog.received("0A1B2C", client="10.0.0.5", helo="exchange.brondby.dk",
                     sender="lela@brondby.dk", size=2048, message_id="<m1@brondby.dk>",
                     tagged=True, department="aeldreomsorg", nrcpt=2)
    maillog.classified("0A1B2C", "olelsen@dhl.dk", "smime", "certificate CN=Ole")
    maillog.outcome("delivered", "0A1B2C", "olelsen@dhl.dk", cls="smime", status="2.0.0",
                    delay=1.234, relay="mx.dhl.dk[192.0.2.1]:25", tls_version="TLSv1.3",
                    tls_cipher="TLS_AES_256_GCM_SHA384", reply="250 2.0.0 Ok: queued as X")
    maillog.outcome("bounced", "0A1B2C", "hm@hotmail.dk", cls="unsafe", status="5.7.1",
                    delay=0.5, reason="no certificate")
    maillog.dsn("0A1B2C", dsn_id="0D1E2F", action="failed", recipient="lela@brondby.dk")
    maillog.removed("0A1B2C")


def test_both_formats_carry_the_same_fields(captured: Captured):
    emit_road()
    found = captured.events()
    assert [e["event"] for e in found] == ["received", "classified", "delivered", "bounced",
                                           "dsn", "removed"]
    common = {"time", "level", "logger", "pid", "queue_id", "event"}
    assert {k: v for k, v in found[0].items() if k not in common} == {
        "client": "10.0.0.5", "helo": "exchange.brondby.dk", "from": "lela@brondby.dk",
        "size": 2048, "message_id": "<m1@brondby.dk>", "tagged": True,
        "department": "aeldreomsorg", "nrcpt": 2}
    assert {k: v for k, v in found[2].items() if k not in common} == {
        "to": "olelsen@dhl.dk", "class": "smime", "relay": "mx.dhl.dk[192.0.2.1]:25",
        "tls_version": "TLSv1.3", "tls_cipher": "TLS_AES_256_GCM_SHA384",
        "status": "2.0.0", "reply": "250 2.0.0 Ok: queued as X", "delay": 1.23}
    assert "relay" not in found[3] and found[3]["reason"] == "no certificate"
    assert (found[4]["dsn_id"], found[4]["to"]) == ("0D1E2F", "lela@brondby.dk")
    assert all(e["queue_id"] == "0A1B2C" and e["logger"] == "gateway.mail" for e in found)
    stamp = datetime.fromisoformat(str(found[0]["time"]))  # local time, ms, UTC offset
    assert re.fullmatch(r"[\d-]{10}T[\d:]{8}\.\d{3}[+-]\d\d:\d\d", str(found[0]["time"]))
    assert abs(stamp.timestamp() - time.time()) < 60
    assert len(captured.text.splitlines()) == 6  # one line per event, no more


def test_text_lines_look_like_postfix():
    with capture("text") as captured:
        emit_road()
    messages = [line.split("]: ", 1)[1] for line in captured.text.splitlines()]
    assert messages[0] == ("0A1B2C: received client=10.0.0.5 helo=exchange.brondby.dk "
                           "from=<lela@brondby.dk> size=2048 message_id=<m1@brondby.dk> "
                           "tagged=true department=aeldreomsorg nrcpt=2")
    assert messages[3] == ('0A1B2C: bounced to=<hm@hotmail.dk> class=unsafe status=5.7.1 '
                           'reason="no certificate" delay=0.5')
    assert messages[5] == "0A1B2C: removed"
    assert captured.text.split(" ", 2)[1] == "INFO"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_cluster_node_names_itself_on_every_line(fmt: str):
    with capture(fmt, node="gw-2") as captured:
        emit_road()
        logging.getLogger("gateway.app").info("reloaded")
    lines = records(captured.text, fmt)
    assert len(lines) == 7 and all(line["node"] == "gw-2" for line in lines)
    assert lines[0]["event"] == "received" and lines[-1]["message"] == "reloaded"
    with capture(fmt) as single:
        emit_road()
    assert all("node" not in line for line in records(single.text, fmt))


def test_the_null_sender_and_empty_fields(captured: Captured):
    maillog.received("0A1B2C", client="", helo="", sender="", size=10, message_id="",
                     tagged=False, department="", nrcpt=1)
    [event] = captured.events()
    assert event["from"] == ""  # text: from=<>, as Postfix writes it
    assert not {"client", "helo", "message_id", "department"} & set(event)
    if captured.fmt == "text":
        assert " from=<> " in captured.text


def test_hostile_values_stay_on_one_line(captured: Captured):
    reply = '550 5.7.1 "no"\r\nX-Injected: yes = \\ \x00 end'
    maillog.outcome("bounced", "0A1B2C", 'odd"name@x.dk', cls="plain", status="5.7.1",
                    delay=0, relay="mx[192.0.2.1]:25", reply=reply)
    assert len(captured.text.splitlines()) == 1
    [event] = captured.events()
    assert event["reply"] == reply and event["to"] == 'odd"name@x.dk'


def test_cpr_numbers_in_free_text_are_masked(captured: Captured):
    maillog.classified("0A1B2C", "a@x.dk", "unsafe", f"refused: {CPR} and 010180-1234")
    maillog.received("0A1B2C", client="10.0.0.5", helo=f"host{CPR}", sender="a@x.dk",
                     size=1, message_id=f"<{CPR}@x.dk>", tagged=True, department="",
                     nrcpt=1)
    maillog.outcome("deferred", "0A1B2C", "a@x.dk", cls="tunnel", status="4.0.0", delay=0,
                    reply=f"451 4.0.0 try later 010180 1234 (queue {CPR}99)")
    assert "1234" not in captured.text.replace(f"{CPR}99", "")
    found = captured.events()
    assert found[0]["reason"] == "refused: XXXXXX-XXXX and XXXXXX-XXXX"
    assert found[1]["message_id"] == "<XXXXXX-XXXX@x.dk>"
    assert found[2]["reply"] == f"451 4.0.0 try later XXXXXX-XXXX (queue {CPR}99)"


def test_ordinary_records_and_tracebacks(captured: Captured):
    log = logging.getLogger("gateway.app")
    log.info("reloaded %s: %d SEPO domain(s)", "gateway.toml", 3)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("attempt for %s failed unexpectedly", "0A1B2C")
    if captured.fmt == "json":
        first, second = map(json.loads, captured.text.splitlines())
        assert second["level"] == "error" and "ValueError: boom" in second["exc"]
    else:
        first, second = records(captured.text, "text")
        assert "ValueError: boom" in captured.text
    assert first["message"] == "reloaded gateway.toml: 3 SEPO domain(s)"
    assert first["logger"] == "gateway.app" and "event" not in first


def test_nothing_is_built_when_the_level_is_off(captured: Captured):
    logging.getLogger("gateway.mail").setLevel(logging.WARNING)
    try:
        emit_road()
    finally:
        logging.getLogger("gateway.mail").setLevel(logging.NOTSET)
    assert captured.text == ""


class Writes(io.StringIO):
    """A stream that keeps each write apart, as a pipe's reader would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@contextmanager
def turn_handler(stream: Writes) -> Iterator[maillog.TurnHandler]:
    handler = maillog.TurnHandler(stream)
    handler.setFormatter(maillog.TextFormatter())
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def queue_ids(text: str) -> list[str]:
    return [str(line["queue_id"]) for line in records(text, "text") if "queue_id" in line]


async def test_one_loop_turn_is_one_write_in_order():
    stream = Writes()
    with turn_handler(stream) as handler:
        handler.per_turn(asyncio.get_running_loop())
        emit_road()
        assert stream.writes == []  # not before the turn ends
        await asyncio.sleep(0)
        assert len(stream.writes) == 1 and len(records(stream.getvalue(), "text")) == 6
        maillog.removed("0D1E2F")
        # A thread's line writes what the loop's turn logged first.
        await asyncio.to_thread(maillog.removed, "0F1F2F")
        assert queue_ids(stream.writes[-1]) == ["0D1E2F", "0F1F2F"]
        await asyncio.sleep(0)
        handler.per_turn(None)
        maillog.removed("1A1B1C")  # once the loop is done with, each line at once
        assert queue_ids(stream.writes[-1]) == ["1A1B1C"]
    assert queue_ids(stream.getvalue()) == ["0A1B2C"] * 6 + ["0D1E2F", "0F1F2F", "1A1B1C"]


async def test_a_long_turn_writes_whole_lines_of_at_most_pipe_buf():
    stream = Writes()
    with turn_handler(stream) as handler:
        handler.per_turn(asyncio.get_running_loop())
        for n in range(200):
            maillog.reject(client="10.0.0.5", sender=f"lela{n}@brondby.dk",
                           recipient="æøå@brøndby.dk", reply="554 5.7.1 Relaying denied")
        maillog.reject(client="10.0.0.5", sender="x" * 5000 + "@brondby.dk", recipient="",
                       reply="553 5.1.7 Sender address is not a valid mailbox")
        await asyncio.sleep(0)
        handler.per_turn(None)
    assert len(records(stream.getvalue(), "text")) == 201
    assert len(stream.writes) > 10
    for text in stream.writes:
        assert text.endswith("\n")
        assert len(text.encode()) <= maillog.PIPE_BUF or text.count("\n") == 1


def test_what_a_turn_logged_is_written_when_the_process_exits(tmp_path):
    """An exception that ends the daemon inside a turn still leaves its lines."""
    script = (
        "import asyncio\n"
        "from gateway.observe import maillog\n"
        "async def main():\n"
        "    maillog.per_turn(asyncio.get_running_loop())\n"
        "    maillog.removed('0A1B2C')\n"
        "    maillog.removed('0D1E2F')\n"
        "    raise SystemExit(3)\n"
        "maillog.setup('text')\n"
        "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 3
    assert queue_ids(done.stderr) == ["0A1B2C", "0D1E2F"]
