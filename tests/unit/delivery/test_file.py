"""The file route: one exclusive, fsynced file per delivery with the envelope on top."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.delivery import Rcpt, Result, TlsPolicy, parse_route
from gateway.delivery.file import FileTransport

OK = 250
TEMPFAIL = 451
MESSAGE = b"From: anna@brondby.test\r\nSubject: Hej\r\n\r\nTekst.\r\n"
RCPTS = (Rcpt("lone@partner.test"), Rcpt("bo@partner.test"))


async def deliver(folder: Path, data: bytes = MESSAGE, queue_id: str = "Q1",
                  sender: str = "anna@brondby.test") -> Result:
    return await FileTransport().deliver(parse_route(f"file:{folder}"), "partner.test", sender,
                                         RCPTS, data, TlsPolicy(), queue_id=queue_id)


async def test_writes_the_envelope_then_the_message(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "new"  # created when missing
    result = await deliver(folder)
    assert {a: r.code for a, r in result.replies.items()} == {
        "lone@partner.test": OK, "bo@partner.test": OK}
    written = (folder / "Q1.1.eml").read_bytes()
    assert written == (b"X-Envelope-From: <anna@brondby.test>\r\n"
                       b"X-Envelope-To: lone@partner.test\r\n"
                       b"X-Envelope-To: bo@partner.test\r\n" + MESSAGE)
    assert result.peer == str(folder / "Q1.1.eml")
    assert result.dsn_relayed == frozenset()  # final delivery: we are the last hop


async def test_each_delivery_gets_the_next_number_and_nothing_is_overwritten(
        tmp_path: Path) -> None:
    await deliver(tmp_path)
    (tmp_path / "Q1.2.eml").write_bytes(b"someone else's")
    await deliver(tmp_path)
    await deliver(tmp_path, queue_id="Q2")
    assert sorted(os.listdir(tmp_path)) == [
        "Q1.1.eml", "Q1.2.eml", "Q1.3.eml", "Q2.1.eml"]
    assert (tmp_path / "Q1.2.eml").read_bytes() == b"someone else's"


async def test_the_envelope_follows_the_messages_line_endings(tmp_path: Path) -> None:
    await deliver(tmp_path, data=MESSAGE.replace(b"\r\n", b"\n"), sender="")
    assert (tmp_path / "Q1.1.eml").read_bytes().startswith(
        b"X-Envelope-From: <>\nX-Envelope-To: lone@partner.test\n")


async def test_a_folder_that_cannot_be_made_defers(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    result = await deliver(blocker / "sub")
    assert {(r.code, r.status) for r in result.replies.values()} == {(TEMPFAIL, "4.3.0")}
