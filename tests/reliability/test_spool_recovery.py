"""A spool record that cannot be read at start is quarantined and logged; the rest of the
queue is delivered. A listing reports such a record and changes nothing. A spool written
by an older version (two files per message) is delivered by this one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gateway.model import Envelope, RecipientState
from gateway.spool.store import Spool, new_id
from tests.support.daemon import Daemon, GatewayConfig
from tests.support.waiting import until

MESSAGE = b"From: a@brondby.dk\r\nTo: b@brondby.dk\r\nSubject: s %d\r\n\r\nbody\r\n"


def test_corrupt_records_are_quarantined(config: GatewayConfig, daemons, outcome):
    config.internal_route = "smtp://127.0.0.1:9"  # nothing listens: mail stays queued
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    ids = [gateway.send("a@brondby.dk", ["b@brondby.dk"], MESSAGE % i) for i in range(5)]
    gateway.stop()
    spool = config.spool / "w0"  # the one worker's part of the spool
    records = {i: Spool(spool).read(i).to_json() for i in ids}
    (spool / f"{ids[0]}.json").write_bytes(b'{"version": 1, "id": ')  # torn JSON
    records[ids[1]]["version"] = 99
    (spool / f"{ids[1]}.json").write_text(json.dumps(records[ids[1]]))  # a future version
    (spool / f"{ids[2]}.json").write_text(json.dumps(records[ids[2]]))
    (spool / f"{ids[2]}.msg").unlink()  # a record without its message
    (spool / f"{ids[4]}.json").unlink(missing_ok=True)  # only the message file, and in it
    rotten = bytearray((spool / f"{ids[4]}.msg").read_bytes())
    rotten[5] ^= 0x01  # one bit flipped on the disk
    (spool / f"{ids[4]}.msg").write_bytes(bytes(rotten))
    config.internal_route = ""  # the outbox
    gateway.start()
    [out] = gateway.wait_outbox(1)
    gateway.wait_queue_empty()
    quarantined = sorted(p.name for p in (spool / "quarantine").iterdir())
    logged = [line for line in gateway.logs().splitlines() if "quarantine" in line]
    outcome(f"delivered {out.name.split('.')[0] == ids[3]} (the sound one); quarantined "
            f"{quarantined}; {len(logged)} log lines")
    assert out.name.startswith(ids[3])
    assert quarantined == sorted([f"{ids[0]}.msg", f"{ids[0]}.json", f"{ids[1]}.msg",
                                  f"{ids[1]}.json", f"{ids[2]}.json", f"{ids[4]}.msg"])
    assert len(logged) == 4 and all(i in "\n".join(logged) for i in ids[:3] + ids[4:])


def files(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` and what it holds."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_listing_reports_a_record_it_cannot_read_and_changes_nothing(
        config: GatewayConfig, daemons, outcome):
    """`queue list` needs no lock and may run beside the daemon, which may be changing the
    very record it reads: quarantining is the daemon's start's, never a reader's."""
    config.internal_route = "smtp://127.0.0.1:9"  # nothing listens: mail stays queued
    config.retry_min = config.retry_max = 3600  # and is not tried again meanwhile
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    torn, sound = (gateway.send("a@brondby.dk", ["b@brondby.dk"], MESSAGE % i) for i in range(2))
    deadline = time.monotonic() + 20
    while not all(m["attempts"] for m in gateway.http("/api/queue")[1]["messages"]):
        assert time.monotonic() < deadline, gateway.logs()
        time.sleep(0.05)  # tried once, so no attempt writes a state in what follows
    gateway.stop()
    spool = config.spool / "w0"
    (spool / f"{torn}.json").write_bytes(b'{"version": 1, "id": ')  # torn JSON
    before = files(config.spool)

    listed = gateway.cli("queue", "list", "--json")  # no daemon runs
    assert listed.returncode == 0, listed.stderr
    assert [m["id"] for m in json.loads(listed.stdout)["messages"]] == [sound]
    assert files(config.spool) == before, listed.stderr
    assert f"cannot read spool record {spool / torn}" in listed.stderr, listed.stderr

    gateway.start()  # the start quarantines it; the daemon does not know the next one
    assert sorted(os.listdir(spool / "quarantine")) == [f"{torn}.json", f"{torn}.msg"]
    stranger = new_id()
    (spool / f"{stranger}.msg").write_bytes((spool / f"{sound}.msg").read_bytes())
    (spool / f"{stranger}.json").write_bytes(b'{"version": 1, "id": ')
    before = files(config.spool)
    status, body = gateway.http("/api/queue")
    listed = gateway.cli("queue", "list", "--json")
    outcome(f"offline listing: exit 0, reported {torn}, changed nothing; beside the daemon: "
            f"API {status}, CLI exit {listed.returncode}, spool unchanged "
            f"{files(config.spool) == before}")
    assert status == 200 and [m["id"] for m in body["messages"]] == [sound]
    assert listed.returncode == 0 and stranger in listed.stderr
    assert files(config.spool) == before
    # Logged as the listing is answered: the line is written at the end of that loop turn.
    until(lambda: f"cannot read spool record {spool / stranger}" in gateway.logs(),
          lambda: gateway.logs()[-3000:])


def test_a_spool_of_the_two_file_layout_is_delivered(config: GatewayConfig, daemons,
                                                     outcome):
    """An upgrade loses no queued mail: the body and state files an older version left, in
    the flat spool, a worker's folder and the folder of a worker no longer started."""
    config.spool.mkdir(parents=True)
    large = b"".join(b"linje %d\r\n" % i for i in range(150_000))  # > 1 MiB: read in pieces
    queued = {}
    for n, folder in enumerate([config.spool, config.spool / "w0", config.spool / "w0",
                                config.spool / "w3"]):
        folder.mkdir(exist_ok=True)
        env = Envelope(id=new_id(), sender="a@brondby.dk",
                       recipients=[RecipientState("b@brondby.dk")], received=1.0)
        data = MESSAGE % n + (large if n == 2 else b"")
        (folder / f"{env.id}.eml").write_bytes(data)
        (folder / f"{env.id}.json").write_text(json.dumps(env.to_json()))
        queued[env.id] = data
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    delivered = {out.name.split(".")[0]: out.read_bytes()
                 for out in gateway.wait_outbox(len(queued))}
    gateway.wait_queue_empty()
    left = sorted(p.relative_to(config.spool).as_posix() for p in config.spool.rglob("*")
                  if p.suffix in (".eml", ".json", ".msg", ".tmp"))
    outcome(f"{len(queued)} messages of the two-file layout: {len(delivered)} delivered, "
            f"left in the spool: {left}")
    assert delivered.keys() == queued.keys()
    assert all(delivered[i].endswith(data) for i, data in queued.items())
    assert left == []
