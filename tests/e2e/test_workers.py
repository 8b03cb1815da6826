"""Several worker processes as one gateway: shared port, one spool lock, restarts, totals."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import threading
import time
from pathlib import Path

from tests.support.daemon import Daemon, GatewayConfig, descendants
from tests.support.sink import free_port

ACCEPTED = 250
MESSAGE = (b"From: Signe <signo@brondby.dk>\r\nTo: hm@hotmail.dk\r\nSubject: hej\r\n"
           b"Message-ID: <w@brondby.dk>\r\n\r\nhej\r\n")


def start(config: GatewayConfig, daemons: list[Daemon]) -> Daemon:
    config.workers = max(config.workers, 2)
    daemon = Daemon(config)
    daemons.append(daemon)
    return daemon.start()


def wait(predicate, what: str, daemon: Daemon, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}:\n{daemon.logs()[-4000:]}")


def deferring(config: GatewayConfig) -> None:
    """Nothing listens on the default route: every message waits in the spool."""
    config.default_route = f"smtp://127.0.0.1:{free_port()}"
    config.retry_min = config.retry_max = 3600


def test_workers_share_the_port_and_report_one_total(config: GatewayConfig, daemons):
    deferring(config)
    gateway = start(config, daemons)
    assert len(gateway.worker_pids()) == 2
    ids = [gateway.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE) for _ in range(24)]
    wait(lambda: len(gateway.spooled()) == 24, "all 24 spooled", gateway)
    # One connection per message: the kernel spreads them over both workers' sockets.
    owners = {path.parent.name for path in gateway.spooled()}
    assert owners == {"w0", "w1"}
    assert gateway.metric("sendsikkert_messages_received_total", tagged="false") == 24
    wait(lambda: gateway.metric("sendsikkert_queue_messages") == 24, "queue gauge", gateway)
    listing = gateway.cli("queue", "list", "--json", check=True).stdout
    assert all(queue_id in listing for queue_id in ids)
    assert gateway.stop() == 0
    assert gateway.worker_pids() == []


def test_a_dead_worker_comes_back_and_delivers_what_it_left(config: GatewayConfig, daemons):
    deferring(config)
    gateway = start(config, daemons)
    for _ in range(12):
        gateway.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE)
    wait(lambda: len(gateway.spooled()) == 12, "all spooled", gateway)
    victim = gateway.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait(lambda: len(gateway.worker_pids()) == 2 and victim not in gateway.worker_pids()
         and gateway.http("/readyz")[0] == 200, "worker restarted", gateway)
    assert "exited with status -9; starting it again" in gateway.logs()
    # SIGHUP reaches every worker: with the outbox as route, all of them deliver at once.
    config.default_route = ""
    config.write()
    gateway.signal(signal.SIGHUP)
    assert len(gateway.wait_outbox(12)) == 12
    gateway.wait_queue_empty()
    wait(lambda: gateway.metric("sendsikkert_queue_messages") == 0, "gauge of the dead "
         "worker dropped", gateway)


def worker_index(pid: int) -> int | None:
    """N of a `serve --worker N` process; None for any other process (or none)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return int(args[args.index(b"--worker") + 1]) if b"--worker" in args else None


def test_a_reload_while_a_worker_restarts_waits_for_it(config: GatewayConfig, daemons):
    """SIGHUP while a dead worker's successor is still loading: the supervisor holds the
    reload back until it is ready, rather than ending it with SIGHUP's default action."""
    gateway = start(config, daemons)
    victim = next(pid for pid in gateway.worker_pids() if worker_index(pid) is not None)
    index = worker_index(victim)
    os.kill(victim, signal.SIGKILL)
    wait(lambda: any(worker_index(pid) == index for pid in gateway.worker_pids()
                     if pid != victim), "the successor is loading", gateway)
    gateway.signal(signal.SIGHUP)
    wait(lambda: f"worker {index} is back" in gateway.logs(), "the successor ready", gateway)
    wait(lambda: gateway.http("/readyz")[0] == 200, "ready", gateway)
    assert gateway.logs().count("starting it again") == 1, gateway.logs()[-4000:]


def test_fewer_workers_after_a_restart_deliver_every_message(config: GatewayConfig, daemons):
    deferring(config)
    config.workers = 3
    gateway = start(config, daemons)
    for _ in range(15):
        gateway.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE)
    wait(lambda: len(gateway.spooled()) == 15, "all spooled", gateway)
    assert gateway.stop() == 0
    assert {p.parent.name for p in gateway.spooled()} == {"w0", "w1", "w2"}

    config.workers = 1
    config.default_route = ""
    healed = Daemon(config)
    daemons.append(healed)
    healed.start()
    assert healed.cli("queue", "retry").returncode == 0  # they wait an hour otherwise
    assert len(healed.wait_outbox(15)) == 15
    healed.wait_queue_empty()
    assert not (config.spool / "w1").exists() and not (config.spool / "w2").exists()


def test_signals_while_the_workers_start_wait_for_the_start(config: GatewayConfig, daemons):
    """`docker stop` right after `docker start`: SIGHUP and SIGTERM that come while the
    supervisor is still starting its workers are not met by their default action (killed
    by the signal); the daemon finishes starting, then stops cleanly with its workers."""
    config.workers = 2
    daemon = Daemon(config)
    daemons.append(daemon)
    proc = daemon.spawn()
    wait(lambda: descendants(proc.pid), "a worker process started", daemon)
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, daemon.logs()[-4000:]
    assert "send-sikkert ready" in daemon.logs() and daemon.worker_pids() == []


def test_sigint_stops_like_sigterm(config: GatewayConfig, daemons):
    """CONTRACT: SIGTERM or SIGINT stop the daemon cleanly (Ctrl-C in a terminal)."""
    deferring(config)
    gateway = start(config, daemons)
    queue_id = gateway.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE)
    wait(lambda: len(gateway.spooled()) == 1, "spooled", gateway)
    assert gateway.stop(signal.SIGINT) == 0
    assert gateway.worker_pids() == [] and "stopping" in gateway.logs()
    assert gateway.cli("queue", "show", queue_id).returncode == 0  # still queued


def test_killing_the_daemon_takes_its_workers_and_the_lock(config: GatewayConfig, daemons):
    gateway = start(config, daemons)
    workers = gateway.worker_pids()
    gateway.stop(signal.SIGKILL)
    wait(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in workers),
         "workers died with their supervisor", gateway)
    again = start(config, daemons)  # the spool lock and the port are free again
    assert again.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE)


def test_kill_9_of_workers_under_load_loses_no_accepted_message(config: GatewayConfig,
                                                                 daemons):
    gateway = start(config, daemons)
    accepted: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", config.smtp_port, timeout=10) as smtp:
                    smtp.ehlo("exchange.brondby.dk")
                    code, reply = smtp.mail("signo@brondby.dk")[0], b""
                    smtp.rcpt("hm@hotmail.dk")
                    code, reply = smtp.data(MESSAGE)
                    if code == ACCEPTED:
                        accepted.append(reply.decode().rsplit(" ", 1)[-1])
            except (smtplib.SMTPException, OSError):
                pass  # a session cut by the kill got no 250: nothing was promised

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            time.sleep(0.7)
            pids = gateway.worker_pids()
            if pids:
                os.kill(pids[len(accepted) % len(pids)], signal.SIGKILL)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert len(accepted) > 10
    wait(lambda: gateway.http("/readyz")[0] == 200, "workers back", gateway)
    gateway.wait_queue_empty(timeout=30)
    delivered = {path.name.split(".")[0] for path in gateway.outbox()}
    assert set(accepted) <= delivered


def test_a_port_another_gateway_holds_is_refused_not_shared(config: GatewayConfig, daemons):
    start(config, daemons)
    other = GatewayConfig(config.root / "other", config.ca)
    other.smtp_port = config.smtp_port  # same SMTP port, own spool and HTTP port
    other.write()
    result = Daemon(other).cli("serve")
    assert result.returncode == 2
    assert "smtp.listen" in result.stderr and "in use" in result.stderr


def test_connection_limits_count_every_worker(config: GatewayConfig, daemons):
    config.smtp_extra = "max_connections = 4\nmax_connections_per_client = 3"
    gateway = start(config, daemons)
    assert len(gateway.worker_pids()) == 2
    held = [socket.create_connection(("127.0.0.1", config.smtp_port)) for _ in range(3)]
    try:
        greetings = [s.recv(200) for s in held]
        assert all(g.startswith(b"220") for g in greetings)
        # Wherever the kernel puts the fourth, its worker knows of the other three.
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", config.smtp_port)) as extra:
                assert extra.recv(200).startswith(b"421 4.7.0")
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    with socket.create_connection(("127.0.0.1", config.smtp_port)) as again:
        assert again.recv(200).startswith(b"220")
