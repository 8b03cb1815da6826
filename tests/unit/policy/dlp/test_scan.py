"""Where the scan runs: small text on the loop, small mail with documents in a thread,
large text in pieces in a thread, large mail with documents in a worker process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from gateway.policy.dlp.scan import ScanFailed, Scanner, describe_places, scan_message
from gateway.spool.body import SpoolReadError
from tests.support import documents as d
from tests.support.spooled import open_spooled

MESSAGE = d.mail("x" * 2000 + "\nBente 010190-1230",
                 attachments=[("brev.pdf", d.PDF_TYPE, d.pdf("Ole 220910-1230"))])


async def test_small_and_large_messages_give_the_same_result():
    inline, pooled = Scanner(), Scanner(inline_max=1000)
    try:
        expected = scan_message(MESSAGE).findings
        assert (await inline.scan(MESSAGE)).findings == expected
        assert (await pooled.scan(MESSAGE)).findings == expected
        assert len(expected) == 2
    finally:
        pooled.close()


async def test_a_dead_worker_fails_the_scan_and_the_next_one_starts_anew():
    scanner = Scanner(inline_max=0)
    try:
        await scanner.scan(MESSAGE)
        workers = multiprocessing.active_children()
        assert workers  # the scan ran in a process of its own
        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)
            worker.join(10)
        with pytest.raises(ScanFailed):
            await scanner.scan(MESSAGE)
        assert len((await scanner.scan(MESSAGE)).findings) == 2
    finally:
        scanner.close()


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting the hops to a thread."""

    hops = 0

    def submit(self, *args, **kwargs):
        self.hops += 1
        return super().submit(*args, **kwargs)


async def hops_and_findings(scanner: Scanner, data) -> tuple[int, list[str]]:
    executor = CountingExecutor(2)
    asyncio.get_running_loop().set_default_executor(executor)
    result = await scanner.scan(data)
    return executor.hops, [f.masked for f in result.findings]


async def test_small_text_is_scanned_on_the_loop_and_documents_in_a_thread():
    scanner, before = Scanner(), set(multiprocessing.active_children())
    text = d.mail("Bente 010190-1230", html="<p>Ole 220910-1230</p>")
    assert await hops_and_findings(scanner, text) == (0, ["010190-XXXX", "220910-XXXX"])
    assert await hops_and_findings(scanner, MESSAGE) == (1, ["010190-XXXX", "220910-XXXX"])
    assert not set(multiprocessing.active_children()) - before


async def test_large_text_is_read_in_pieces_in_a_thread_and_documents_in_a_process(
        tmp_path: Path):
    scanner = Scanner(inline_max=1000, loop_max=1000)
    before = set(multiprocessing.active_children())
    try:
        path = tmp_path / "text.eml"
        path.write_bytes(d.mail("Bente 010190-1230 " + "Hej igen. " * 200_000))
        spooled = open_spooled(path)
        assert spooled is not None and len(spooled) > 1_000_000
        assert await hops_and_findings(scanner, spooled) == (1, ["010190-XXXX"])
        assert not set(multiprocessing.active_children()) - before  # no process for text
        path = tmp_path / "pdf.eml"
        path.write_bytes(MESSAGE)
        spooled = open_spooled(path)
        assert await hops_and_findings(scanner, spooled) == (1, ["010190-XXXX", "220910-XXXX"])
        assert set(multiprocessing.active_children()) - before  # the PDF: a worker process
    finally:
        scanner.close()


async def test_a_spooled_message_is_read_only_to_where_its_body_ends(tmp_path: Path):
    # A spool file holds the message's envelope after it: that is never scanned.
    path = tmp_path / "m.msg"
    message = d.mail("Bente 010190-1230 " + "Hej igen. " * 50_000)
    path.write_bytes(message + b'{"note": "Ole 220910-1230"}')
    spooled = open_spooled(path, len(message))
    assert spooled is not None
    scanner = Scanner(inline_max=1000, loop_max=1000)
    try:
        assert [f.masked for f in (await scanner.scan(spooled)).findings] == ["010190-XXXX"]
    finally:
        scanner.close()


async def test_a_spooled_message_cut_short_fails_the_scan_instead_of_passing_clean(
        tmp_path: Path):
    # What was never read cannot be called free of CPR numbers: the attempt is deferred.
    path = tmp_path / "m.msg"
    message = d.mail("Hej igen. " * 50_000 + "Bente 010190-1230")
    path.write_bytes(message)
    spooled = open_spooled(path)
    assert spooled is not None
    os.truncate(path, len(message) // 2)
    scanner = Scanner(inline_max=1000, loop_max=1000)
    try:
        with pytest.raises(SpoolReadError, match="bytes early"):
            await scanner.scan(spooled)
    finally:
        scanner.close()


def test_places_are_described_without_numbers():
    assert describe_places((("subject", ""), ("attachment", "a.pdf"), ("attachment", ""))) == (
        "the subject, the attachment a.pdf and an unnamed attachment")
    assert describe_places((("body", ""),)) == "the body"
