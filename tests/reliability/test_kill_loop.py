"""SIGKILL the daemon again and again while mail streams in: every message that got a
250 is delivered (at least once); lost = 0."""

from __future__ import annotations

import re
import signal
import smtplib
import threading
import time

from tests.support.daemon import Daemon, GatewayConfig

MESSAGES = 500
KILLS = 5
MARK = re.compile(rb"Subject: kill-loop (\d+)\r\n")


def sender(port: int, acked: set[int], stop: threading.Event) -> None:
    """Send MESSAGES messages one after another, each until it gets its 250."""
    n = 0
    while n < MESSAGES and not stop.is_set():
        data = (b"From: a@brondby.dk\r\nTo: b@brondby.dk\r\nSubject: kill-loop %d\r\n\r\n"
                b"body %d\r\n" % (n, n))
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.ehlo("exchange.brondby.dk")
                client.sendmail("a@brondby.dk", ["b@brondby.dk"], data)
            acked.add(n)
            n += 1
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)  # the daemon is down or died mid-session: send it again


def test_kill_loop_loses_nothing(config: GatewayConfig, daemons, outcome):
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    acked: set[int] = set()
    stop = threading.Event()
    thread = threading.Thread(target=sender, args=(config.smtp_port, acked, stop))
    thread.start()
    kills = 0
    try:
        while kills < KILLS:
            target = (kills + 1) * MESSAGES // (KILLS + 1)
            deadline = time.monotonic() + 120
            while len(acked) < target and time.monotonic() < deadline:
                time.sleep(0.02)
            gateway.stop(signal.SIGKILL)
            kills += 1
            time.sleep(0.2)
            gateway.start()
        thread.join(180)
    finally:
        stop.set()
        thread.join()
    assert len(acked) == MESSAGES
    deadline = time.monotonic() + 120
    delivered: list[int] = []
    while time.monotonic() < deadline:
        delivered = [int(m[1]) for p in gateway.outbox()
                     if (m := MARK.search(p.read_bytes()))]
        if acked <= set(delivered):
            break
        time.sleep(0.5)
    lost = acked - set(delivered)
    outcome(f"{len(acked)} messages answered 250 across {kills} SIGKILLs: "
            f"{len(set(delivered))} delivered, {len(delivered) - len(set(delivered))} "
            f"twice, lost = {len(lost)}")
    assert kills >= KILLS and not lost, sorted(lost)[:20]
