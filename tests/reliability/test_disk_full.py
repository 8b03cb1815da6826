"""A full disk at accept time: `452 4.3.1`, nothing half-written, and the queue goes on
once there is room again. The spool is a small tmpfs this test mounts and unmounts."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, GatewayConfig
from tests.support.rawsmtp import RawSmtp

OK = 250
NO_STORAGE = 452
OK_HTTP, NOT_READY = 200, 503
MESSAGE = (b"From: a@brondby.dk\r\nTo: b@brondby.dk\r\nSubject: s\r\n\r\n"
           + (b"x" * 76 + b"\r\n") * 300)


@pytest.fixture
def small_spool(config: GatewayConfig, daemons: list[Daemon]) -> Iterator[Path]:
    """config.spool as a 512 KiB tmpfs; the daemons are stopped before it goes."""
    config.spool.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs",
                              str(config.spool)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield config.spool
    finally:
        for daemon in daemons:
            daemon.stop()
        if subprocess.run(["umount", str(config.spool)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(config.spool)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem has no room left."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (folder / "probe").write_bytes(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    (folder / "probe").unlink(missing_ok=True)
    return filler


def send(gateway: Daemon) -> tuple[int, bytes]:
    with RawSmtp(gateway.config.smtp_port) as s:
        s.command(b"EHLO exchange.brondby.dk")
        s.command(b"MAIL FROM:<a@brondby.dk>")
        s.command(b"RCPT TO:<b@brondby.dk>")
        code, text = s.data(MESSAGE)
    return code, b" ".join(text)


def test_disk_full_at_accept_time(config: GatewayConfig, daemons, small_spool: Path, outcome):
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    filler = fill(small_spool)
    part = small_spool / "w0"  # the one worker's part of the spool
    before = sorted(p.name for p in part.iterdir())
    code, text = send(gateway)
    after = sorted(p.name for p in part.iterdir())
    outcome(f"disk full: {code} {text.decode()[:60]}; spool before {before}, after {after}")
    assert code == NO_STORAGE and text.startswith(b"4.3.1"), (code, text)
    assert after == before  # no body, no state, no temporary file left behind
    filler.unlink()
    code, _ = send(gateway)
    assert code == OK
    [out] = gateway.wait_outbox(1)
    assert out.read_bytes().endswith(MESSAGE)
    gateway.stop()
    outcome("room again: 250, delivered")


def test_disk_full_while_a_large_message_streams_in(config: GatewayConfig, daemons,
                                                    small_spool: Path, outcome):
    """A body larger than the spool's room fails while it is written, not at the end:
    DATA is still read to its final dot, answered 452, and its temporary file is gone."""
    config.max_message_size = 4_000_000
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    part = small_spool / "w0"
    before = sorted(p.name for p in part.iterdir())
    with RawSmtp(gateway.config.smtp_port) as s:
        s.command(b"EHLO exchange.brondby.dk")
        s.command(b"MAIL FROM:<a@brondby.dk>")
        s.command(b"RCPT TO:<b@brondby.dk>")
        code, text = s.data(MESSAGE * 80)  # about 1.9 MB into 512 KiB
        assert s.command(b"NOOP")[0] == OK  # the session goes on after the refusal
    after = sorted(p.name for p in part.iterdir())
    outcome(f"{len(MESSAGE) * 80} bytes into 512 KiB: {code} {b' '.join(text).decode()[:60]}; "
            f"left behind: {sorted(set(after) - set(before))}")
    assert code == NO_STORAGE and text[0].startswith(b"4.3.1"), (code, text)
    assert after == before


def test_a_spool_that_cannot_be_written_makes_the_gateway_not_ready(
        config: GatewayConfig, daemons: list[Daemon], small_spool: Path):
    """CONTRACT /readyz: 503 with the reason while the spool is not writable (here: made
    read-only, as the kernel does to a filesystem after an I/O error)."""
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    assert gateway.http("/readyz")[0] == OK_HTTP
    # A read-only view of the folder over it: the daemon's open files keep the old one.
    subprocess.run(["mount", "--bind", str(small_spool), str(small_spool)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(small_spool)], check=True)
        status, body = gateway.http("/readyz")
        assert status == NOT_READY and "not writable" in json.dumps(body)
    finally:
        subprocess.run(["umount", str(small_spool)], check=True)
    assert gateway.http("/readyz")[0] == OK_HTTP
