"""The scan off the event loop: a thread for small mail, a worker process for large mail."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from gateway.policy.dlp.scan import ScanFailed, Scanner, describe_places, scan_message
from tests.support import documents as d

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


def test_places_are_described_without_numbers():
    assert describe_places((("subject", ""), ("attachment", "a.pdf"), ("attachment", ""))) == (
        "the subject, the attachment a.pdf and an unnamed attachment")
    assert describe_places((("body", ""),)) == "the body"
