"""A spool record that cannot be read at start is quarantined and logged; the rest of the
queue is delivered."""

from __future__ import annotations

import json

from tests.support.daemon import Daemon, GatewayConfig

MESSAGE = b"From: a@brondby.dk\r\nTo: b@brondby.dk\r\nSubject: s %d\r\n\r\nbody\r\n"


def test_corrupt_records_are_quarantined(config: GatewayConfig, daemons, outcome):
    config.internal_route = "smtp://127.0.0.1:9"  # nothing listens: mail stays queued
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    ids = [gateway.send("a@brondby.dk", ["b@brondby.dk"], MESSAGE % i) for i in range(4)]
    gateway.stop()
    spool = config.spool / "w0"  # the one worker's part of the spool
    (spool / f"{ids[0]}.json").write_bytes(b'{"version": 1, "id": ')  # torn JSON
    record = json.loads((spool / f"{ids[1]}.json").read_bytes())
    record["version"] = 99
    (spool / f"{ids[1]}.json").write_text(json.dumps(record))  # from a future version
    (spool / f"{ids[2]}.eml").unlink()  # a record without its body
    config.internal_route = ""  # the outbox
    gateway.start()
    [out] = gateway.wait_outbox(1)
    gateway.wait_queue_empty()
    quarantined = sorted(p.name for p in (spool / "quarantine").iterdir())
    logged = [line for line in gateway.logs().splitlines() if "quarantine" in line]
    outcome(f"delivered {out.name.split('.')[0] == ids[3]} (the sound one); quarantined "
            f"{quarantined}; {len(logged)} log lines")
    assert out.name.startswith(ids[3])
    assert quarantined == sorted([f"{ids[0]}.eml", f"{ids[0]}.json", f"{ids[1]}.eml",
                                  f"{ids[1]}.json", f"{ids[2]}.json"])
    assert len(logged) == 3 and all(i in "\n".join(logged) for i in ids[:3])
