"""`spool.sync`: how the daemon makes a commit round's message files durable before their
250, seen from outside by strace: one syncfs of the spool's filesystem (the default), or
an fsync of each message file; in both, a reused file gets its message's name only once
it is durable."""

from __future__ import annotations

import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, GatewayConfig

MESSAGE = b"From: a@brondby.dk\r\nTo: b@brondby.dk\r\nSubject: %d\r\n\r\nx\r\n"
# strace -ff -y, one file per thread: "fsync(9</tmp/.../spool/w0/ID.free>) = 0"
_CALL = re.compile(r"^(syncfs|fsync|fdatasync|rename)\((.*?)\)\s+= (-?\d+)", re.M)
_FD = re.compile(r"^\d+<(.*)>$")


def calls(log: Path, spool: Path) -> list[tuple[str, str, list[str]]]:
    """(thread, call, paths) of every successful call strace saw on the spool's files,
    each thread's in its order."""
    found = []
    for trace in sorted(log.parent.glob(log.name + ".*")):
        for name, args, result in _CALL.findall(trace.read_text()):
            paths = [m[1] if (m := _FD.match(a.strip())) else a.strip().strip('"')
                     for a in args.split(", ")]
            if result == "0" and any(p.startswith(str(spool)) for p in paths):
                found.append((trace.suffix, name, paths))
    return found


@pytest.mark.parametrize("mode", ["", "files"])
def test_a_reused_file_is_named_only_after_it_is_durable(ca, tmp_path: Path,
                                                          daemons: list[Daemon],
                                                          mode: str) -> None:
    config = GatewayConfig(root=tmp_path, ca=ca, spool_sync=mode)
    log = tmp_path / "strace.log"
    daemon = Daemon(config, wrapper=("strace", "-ff", "--seccomp-bpf", "-qq", "-y",
                                     "-e", "signal=none",
                                     "-e", "trace=syncfs,fsync,fdatasync,rename",
                                     "-o", str(log)))
    daemons.append(daemon)
    daemon.start()
    daemon.send("a@brondby.dk", ["b@brondby.dk"], MESSAGE % 0)
    daemon.wait_outbox(1)
    daemon.wait_queue_empty()  # its file is emptied and kept, for the next one
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda n: daemon.send("a@brondby.dk", ["b@brondby.dk"],
                                                  MESSAGE % n), range(1, 9)))
    daemon.wait_outbox(9)
    assert daemon.proc is not None  # strace: SIGTERM its child, the supervisor, and strace ends
    pid = daemon.proc.pid
    os.kill(int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0]), signal.SIGTERM)
    daemon.proc.wait(30)

    seen = calls(log, config.spool)
    message_syncs = [c for c in seen if c[1] in ("fsync", "fdatasync")
                     and c[2][0].endswith((".msg", ".free"))]
    syncfs = [c for c in seen if c[1] == "syncfs"]
    if mode == "files":
        assert not syncfs, syncfs
        assert len(message_syncs) >= 9, message_syncs
    else:
        assert syncfs, "the default never called syncfs"
        assert not message_syncs, message_syncs
    named = [c for c in seen if c[1] == "rename" and c[2][0].endswith(".free")]
    assert named, "no reused file was renamed into place"
    assert {Path(c[2][1]).stem for c in named} <= set(ids)
    for tid, _, (free, target) in named:
        before = [c for c in seen[:seen.index((tid, "rename", [free, target]))]
                  if c[0] == tid and c[1] != "rename"]
        last = before[-1] if before else None
        if mode == "files":
            assert last is not None and last[1] == "fsync", (free, last)
            assert free in [c[2][0] for c in before if c[1] == "fsync"], (free, before[-3:])
        else:
            assert last is not None and last[1] == "syncfs", (free, last)
