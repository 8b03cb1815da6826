"""SIGKILL the daemon before each change to the disk that taking a finished message away,
deleting a message from the queue, bouncing a recipient, or handing messages to fewer or
more workers, makes: a recipient delivered before is never delivered again, nothing
answered 250 is lost, a deleted message is never delivered once its sender may have been
told so, and a bounced recipient is either delivered or its sender told, never both.

A random SIGKILL seldom falls between two system calls a microsecond apart, so strace
watches the calls that change the message's files: once to find the steps, then once
per step, freezing the daemon on entering that call (which then never runs) for a
SIGKILL there; then the daemon is started again as it is, without strace. strace
watches the worker (attached once it runs) for a removal, a deletion or a bounce, and
the supervisor from its start (not the workers it starts) for a rebalance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from gateway.model import Envelope, RecipientState, State
from gateway.spool.store import FREE_MAX, Spool, new_id
from tests.support.daemon import Daemon, GatewayConfig, descendants
from tests.support.sink import SmtpSink, on_a_thread

CHANGES = "truncate,rename,renameat,renameat2,unlink,unlinkat"  # what changes a name or a file
_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*?)(?:\) += |\s*<unfinished)", re.M)
_ENTERED = re.compile(rf"^\d+\s+(?:{CHANGES.replace(',', '|')})\(", re.M)
MESSAGE = b"From: a@brondby.dk\r\nTo: b@brondby.dk, c@brondby.dk\r\nSubject: %s\r\n\r\nx\r\n"
Seed = Callable[[GatewayConfig], tuple[str, list[Path]]]  # -> the message's id, its paths
Judge = Callable[[GatewayConfig], tuple[str, bool]]  # -> what became of it, whether right
RETRY = "POST /api/queue/retry"
DELETE = "DELETE /api/queue/{id}"
DELETED = b"deleted from the queue by the postmaster"  # the DSN's Diagnostic-Code
NO_SUCH_USER = "550 5.1.1 no such user here"  # the next hop's refusal of b, as a DSN quotes it


def half_delivered(due: float) -> Envelope:
    """b was delivered at the first attempt; c was deferred until `due`."""
    return Envelope(id=new_id(), sender="a@brondby.dk", received=time.time(),
                    recipients=[RecipientState("b@brondby.dk", State.DELIVERED, attempts=1),
                                RecipientState("c@brondby.dk", State.DEFERRED, attempts=1,
                                               next_attempt=due,
                                               last_error="451 4.4.1 try later")])


def paths(folders: list[Path], queue_id: str) -> list[Path]:
    return [f / (queue_id + suffix) for f in folders
            for suffix in (".msg", ".json", ".free", ".eml")]


async def spooled(folder: Path, env: Envelope) -> None:
    """The message as the daemon spools it (every recipient queued), then the state the
    first attempt left."""
    spool = Spool(folder)
    spool.prepare()
    arrived = Envelope.from_json(env.to_json())
    for r in arrived.recipients:
        r.state, r.attempts, r.next_attempt, r.last_error = State.QUEUED, 0, 0.0, ""
    await spool.put(arrived, MESSAGE % env.id.encode())
    await spool.update(env)


def two_file(folder: Path, env: Envelope) -> None:
    """The message as versions before the message files left it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{env.id}.eml").write_bytes(MESSAGE % env.id.encode())
    (folder / f"{env.id}.json").write_text(json.dumps(env.to_json()))


def removal(emptied_files: int, layout: str = "msg") -> Seed:
    """A half-delivered message in worker 0's folder, due once retried, beside
    `emptied_files` .free files (FREE_MAX of them: its file is unlinked, not kept)."""
    def seed(config: GatewayConfig) -> tuple[str, list[Path]]:
        folder = config.spool / "w0"
        env = half_delivered(time.time() + 3600)
        if layout == "msg":
            asyncio.run(spooled(folder, env))
        else:
            two_file(folder, env)
        for _ in range(emptied_files):
            (folder / f"{new_id()}.free").touch()
        return env.id, paths([folder], env.id)
    return seed


def deletion(config: GatewayConfig) -> tuple[str, list[Path]]:
    """A half-delivered message in worker 0's folder, beside one emptied file that the DSN
    of its deletion is written into. strace -P matches a rename by its first name only:
    the new state's temporary file and that emptied file make the renames of the state
    and of the DSN into place steps too."""
    folder = config.spool / "w0"
    env = half_delivered(time.time() + 3600)
    asyncio.run(spooled(folder, env))
    free = folder / f"{new_id()}.free"
    free.touch()
    return env.id, [*paths([folder], env.id), folder / f"{env.id}.json.tmp", free]


class MendedHop(SmtpSink):
    """A next hop that refuses each address in `refuse` once, then takes it: mended since,
    it delivers any recipient tried again after it bounced."""

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:  # noqa: ANN001
        reply = await super().handle_RCPT(server, session, envelope, address, options)
        self.refuse.pop(address.lower(), None)
        return reply


def bounce(hop: MendedHop) -> Seed:
    """A message to b and c of odense.example (the next hop `hop`) in worker 0's folder,
    deferred once and due once retried; the hop then refuses b for good and takes c.
    Beside it, as for `deletion`, the state's temporary file and one emptied file for
    the DSN."""
    def seed(config: GatewayConfig) -> tuple[str, list[Path]]:
        hop.refuse, hop.messages[:] = {"b@odense.example": NO_SUCH_USER}, []
        folder = config.spool / "w0"
        env = Envelope(id=new_id(), sender="a@brondby.dk", received=time.time(), recipients=[
            RecipientState(address, State.DEFERRED, attempts=1,
                           next_attempt=time.time() + 3600, last_error="451 4.4.1 try later")
            for address in ("b@odense.example", "c@odense.example")])
        asyncio.run(spooled(folder, env))
        free = folder / f"{new_id()}.free"
        free.touch()
        return env.id, [*paths([folder], env.id), folder / f"{env.id}.json.tmp", free]
    return seed


def flat_four(config: GatewayConfig) -> tuple[str, list[Path]]:
    """Four messages in the flat spool of a version without workers; the fourth, half
    delivered, goes to w3 when four workers share them."""
    for _ in range(3):
        two_file(config.spool, Envelope(id=new_id(), sender="a@brondby.dk",
                                        received=time.time(),
                                        recipients=[RecipientState("d@brondby.dk")]))
    env = half_delivered(0.0)
    two_file(config.spool, env)
    return env.id, paths([config.spool, config.spool / "w3"], env.id)


def in_w2(config: GatewayConfig) -> tuple[str, list[Path]]:
    """A half-delivered message in the folder of worker 2, which two workers do not own;
    it goes to w0."""
    env = half_delivered(0.0)
    asyncio.run(spooled(config.spool / "w2", env))
    return env.id, paths([config.spool / "w2", config.spool / "w0"], env.id)


def steps(trace: Path) -> list[tuple[str, int, str]]:
    """The calls strace saw, in order: (name, which call of that name in its thread (as
    strace counts for `when`), arguments)."""
    seen: Counter[tuple[str, str]] = Counter()
    found = []
    for m in _CALL.finditer(trace.read_text()):
        seen[m[1], m[2]] += 1
        found.append((m[2], seen[m[1], m[2]], m[3]))
    return found


def entered(trace: Path) -> int:
    """How many calls strace has seen entered, the one frozen on entry among them."""
    return len(_ENTERED.findall(trace.read_text())) if trace.exists() else 0


def strace(config: GatewayConfig, watched: list[Path], freeze: tuple[str, int] | None
           ) -> list[str]:
    """strace watching the calls that change `watched`; `freeze`: stop on entering the
    n-th call of that name (in its thread, as strace counts)."""
    args = ["strace", "-f", "-qq", "-e", "signal=none", "-s", "1024",
            "-o", str(config.root / "strace.log"), "-e", f"trace={CHANGES}"]
    for path in watched:
        args += ["-P", str(path)]
    if freeze is not None:
        args += ["-e", f"inject={freeze[0]}:delay_enter=120s:when={freeze[1]}"]
    return args


class Run:
    """One run of the daemon with strace watching; with `ask` ("METHOD /path"): the
    worker's, attached once it runs, and then that asked of the daemon (its answer in
    `answer`: a frozen worker gives none); else the supervisor's from its start."""

    def __init__(self, config: GatewayConfig, daemons: list[Daemon], watched: list[Path],
                 freeze: tuple[str, int] | None, ask: str | None) -> None:
        args = strace(config, watched, freeze)
        self.tracer: subprocess.Popen[bytes] | None = None
        self.answer: Future[tuple[int, dict]] | None = None
        if ask is not None:
            self.daemon = Daemon(config)
            daemons.append(self.daemon)
            self.daemon.start()
            [worker] = self.daemon.worker_pids()
            self.tracer = subprocess.Popen([*args, "-p", str(worker)])
            deadline = time.monotonic() + 20
            while not all(_traced(t) for t in Path(f"/proc/{worker}/task").iterdir()):
                assert time.monotonic() < deadline, "strace did not attach"
                time.sleep(0.02)
            method, path = ask.split()
            asking = ThreadPoolExecutor(1)  # its thread ends with the daemon's connection
            self.answer = asking.submit(self.daemon.http, path, method)
            asking.shutdown(wait=False)
        else:
            self.daemon = Daemon(config, wrapper=(*args, "-b", "execve"))
            daemons.append(self.daemon)
            self.daemon.spawn()

    @property
    def supervisor(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid if self.tracer else self.daemon.worker_pids()[0]

    def stop(self) -> None:
        os.kill(self.supervisor, signal.SIGTERM)
        self._wait()

    def kill(self) -> None:
        """SIGKILL the supervisor, then its workers; the process frozen in strace runs no
        further meanwhile."""
        supervisor = self.supervisor
        killed = [supervisor, *sorted(descendants(supervisor))]
        for pid in killed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not all(_dead(pid) for pid in killed):
            assert time.monotonic() < deadline, "the daemon outlived SIGKILL"
            time.sleep(0.02)
        # Only now: strace waits out its delay after its tracee died, and a tracee still
        # alive when strace goes would run on.
        tracer = self.tracer or self.daemon.proc
        assert tracer is not None
        tracer.kill()
        self._wait()

    def _wait(self) -> None:
        assert self.daemon.proc is not None
        self.daemon.proc.wait(30)
        if self.tracer is not None:
            self.tracer.wait(30)


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def _traced(task: Path) -> bool:
    status = (task / "status").read_text()
    return int(status.split("TracerPid:")[1].split()[0]) != 0


def deliveries(config: GatewayConfig) -> Counter[str]:
    """How often each address was delivered to (the file route's X-Envelope-To lines)."""
    found: Counter[str] = Counter()
    for path in config.outbox.glob("*.eml"):
        found.update(m.decode() for m in re.findall(rb"^X-Envelope-To: (\S+)\r$",
                                                   path.read_bytes(), re.M))
    return found


def redelivered(config: GatewayConfig) -> tuple[str, bool]:
    """b, delivered before, is never delivered again; c, due, is delivered."""
    got = deliveries(config)
    return (f"b delivered again {got['b@brondby.dk']}x, c delivered {got['c@brondby.dk']}x",
            got["b@brondby.dk"] == 0 and got["c@brondby.dk"] >= 1)


def deleted_or_queued(config: GatewayConfig) -> tuple[str, bool]:
    """Either the message stayed queued (c is delivered once retried) and its sender was
    never told it was deleted, or c is never delivered and the sender is told (twice
    at worst: RFC 5321 6.1 prefers a duplicate to a loss)."""
    got = deliveries(config)
    told = sum(1 for path in config.outbox.glob("*.eml")
               if b"X-Envelope-To: a@brondby.dk\r\n" in (data := path.read_bytes())
               and DELETED in data)
    queued = got["c@brondby.dk"] >= 1 and told == 0
    deleted = got["c@brondby.dk"] == 0 and told >= 1
    return (f"b delivered again {got['b@brondby.dk']}x, c delivered {got['c@brondby.dk']}x, "
            f"sender told of the deletion {told}x",
            got["b@brondby.dk"] == 0 and (queued or deleted))


def told_or_delivered(hop: SmtpSink) -> Judge:
    """c is delivered; b is either delivered, its sender never told it failed, or never
    delivered and its sender told (twice at worst: RFC 5321 6.1 prefers a duplicate)."""
    def judge(config: GatewayConfig) -> tuple[str, bool]:
        got = Counter(address for m in hop.messages for address in m.rcpt_tos)
        told = sum(1 for path in config.outbox.glob("*.eml")
                   if b"X-Envelope-To: a@brondby.dk\r\n" in (data := path.read_bytes())
                   and NO_SUCH_USER.encode() in data)
        b, c = got["b@odense.example"], got["c@odense.example"]
        return (f"b delivered {b}x, c delivered {c}x, sender told b failed {told}x",
                c >= 1 and ((b == 0 and told >= 1) or (b >= 1 and told == 0)))
    return judge


def crash_at_every_step(config: GatewayConfig, daemons: list[Daemon], seed: Seed,
                        workers: int, workers_after: int, ask: str | None,
                        judge: Judge = redelivered) -> list[str]:
    """Run the scenario once to find its steps, then once per step with a SIGKILL there
    and a start with `workers_after` workers (and every message retried); returns what
    each step was and what became of the message (`judge`)."""
    config.workers = workers
    first_id, watched = seed(config)
    run = Run(config, daemons, watched, None, ask and ask.format(id=first_id))
    if run.answer is not None:
        status, body = run.answer.result(30)
        assert status == 200, body
    run.daemon.wait_queue_empty(timeout=60)
    run.stop()
    found = steps(config.root / "strace.log")
    assert found, "strace saw no change to the message's files"
    if ask is None:
        found = [s for s in found if s[0] == "rename"]  # the moves; removals: see above
    said, right = judge(config)
    assert right, f"the run without a crash: {said}"
    outcomes = []
    for k, (name, nth, args) in enumerate(found):
        for left in (config.spool, config.outbox, config.root / "strace.log"):
            shutil.rmtree(left) if left.is_dir() else left.unlink(missing_ok=True)
        config.workers = workers
        queue_id, watched = seed(config)
        run = Run(config, daemons, watched, (name, nth), ask and ask.format(id=queue_id))
        deadline = time.monotonic() + 60
        while entered(config.root / "strace.log") <= k:
            assert time.monotonic() < deadline, f"never reached step {k + 1}: {name}({args})"
            time.sleep(0.05)
        run.kill()
        config.workers = workers_after
        again = Daemon(config)
        daemons.append(again)
        again.start()
        again.http("/api/queue/retry", "POST")
        again.wait_queue_empty()
        again.stop()
        said, right = judge(config)
        quarantined = sorted(p.name for p in config.spool.rglob("quarantine/*"))
        step = f"{name}({args.replace(str(config.spool) + '/', '').replace(first_id, 'ID')})"
        outcomes.append(f"killed before {step}: {said}, quarantined {quarantined}")
        assert right and quarantined == [], outcomes[-1]
    return outcomes


def test_a_removal_cut_short_delivers_nobody_twice(config: GatewayConfig, daemons, outcome):
    for line in crash_at_every_step(config, daemons, removal(0), 1, 1, RETRY):
        outcome(line)


def test_a_removal_cut_short_unlinking_delivers_nobody_twice(config: GatewayConfig, daemons,
                                                              outcome):
    for line in crash_at_every_step(config, daemons, removal(FREE_MAX), 1, 1, RETRY):
        outcome(line)


def test_a_rebalance_cut_short_then_fewer_workers(config: GatewayConfig, daemons, outcome):
    for line in crash_at_every_step(config, daemons, flat_four, 4, 2, None):
        outcome(line)


def test_a_rebalance_cut_short_then_more_workers(config: GatewayConfig, daemons, outcome):
    for line in crash_at_every_step(config, daemons, in_w2, 2, 4, None):
        outcome(line)


def test_a_removal_of_the_two_file_layout_cut_short_delivers_nobody_twice(
        config: GatewayConfig, daemons, outcome):
    for line in crash_at_every_step(config, daemons, removal(0, "eml"), 1, 1, RETRY):
        outcome(line)


def test_a_deletion_cut_short_is_delivered_only_if_the_sender_was_not_told(
        config: GatewayConfig, daemons, outcome):
    for line in crash_at_every_step(config, daemons, deletion, 1, 1, DELETE,
                                    deleted_or_queued):
        outcome(line)


def test_a_bounce_cut_short_is_never_delivered_once_its_sender_may_be_told(
        config: GatewayConfig, daemons, outcome):
    with on_a_thread(MendedHop()) as hop:
        config.transport = {"odense.example": hop.route}
        for line in crash_at_every_step(config, daemons, bounce(hop), 1, 1, RETRY,
                                        told_or_delivered(hop)):
            outcome(line)
