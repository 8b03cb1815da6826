"""The queue across restarts and crashes, and the queue commands."""

from __future__ import annotations

import json
import os
import re
import signal
import time

from gateway.spool.store import Spool
from tests.support.daemon import Daemon, GatewayConfig, start
from tests.support.pki import rsa_key
from tests.support.sink import free_port

TRY_AGAIN = 75  # EX_TEMPFAIL
MESSAGE = (b"From: Signe <signo@brondby.dk>\r\nTo: hm@hotmail.dk\r\nSubject: hej\r\n"
           b"Message-ID: <q@brondby.dk>\r\n\r\nhej\r\n")


def wait_deferred(gateway: Daemon, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listing = json.loads(gateway.cli("queue", "list", "--json", check=True).stdout)
        for m in listing["messages"]:
            if all(r["state"] == "deferred" for r in m["recipients"]):
                return m
        time.sleep(0.1)
    raise AssertionError(gateway.logs())


def test_deferred_mail_survives_restart_and_crash(config: GatewayConfig, daemons):
    config.default_route = f"smtp://127.0.0.1:{free_port()}"  # nothing listens: deferred
    gateway = start(config, daemons)
    queue_id = gateway.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE)
    message = wait_deferred(gateway)
    assert message["id"] == queue_id and message["attempts"] >= 1
    assert message["recipients"][0]["class"] == "plain"
    assert "4." in message["recipients"][0]["last_error"]
    assert gateway.stop() == 0

    crashed = start(config, daemons)  # picks the message up again, then dies hard
    crashed.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE)
    crashed.stop(signal.SIGKILL)
    assert len(crashed.spooled()) == 2

    config.default_route = ""  # now the outbox: both go out without anyone acting
    healed = start(config, daemons)
    files = healed.wait_outbox(2)
    assert {f.name.split(".")[0] for f in files} >= {queue_id}
    healed.wait_queue_empty()


def test_queue_show_retry_and_delete(config: GatewayConfig, daemons):
    config.default_route = f"smtp://127.0.0.1:{free_port()}"
    config.retry_min = config.retry_max = 3600  # only `retry` makes it try again
    gateway = start(config, daemons)
    queue_id = gateway.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE)
    wait_deferred(gateway)

    listed = gateway.cli("queue", "list")
    assert listed.returncode == 0
    # CONTRACT: id, sender, recipients with their state, age, attempts, next attempt, last error
    head, recipient = listed.stdout.splitlines()[:2]
    assert head.startswith(queue_id) and "<signo@brondby.dk>" in head
    assert re.search(r"age \d+s +attempts 1 +next in \d+s", head), head
    assert re.search(r"<hm@hotmail.dk> deferred plain 451 4\.4\.1 ", recipient), recipient

    shown = gateway.cli("queue", "show", queue_id)
    assert shown.returncode == 0
    assert "<signo@brondby.dk>" in shown.stdout and "hm@hotmail.dk" in shown.stdout
    assert gateway.cli("queue", "show", "NOSUCHID").returncode == 1

    before = json.loads(gateway.cli("queue", "list", "--json").stdout)["messages"][0]
    assert gateway.cli("queue", "retry", queue_id).returncode == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = json.loads(gateway.cli("queue", "list", "--json").stdout)["messages"][0]
        if after["attempts"] > before["attempts"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("retry did not cause another attempt")

    assert gateway.cli("queue", "delete", "NOSUCHID").returncode == 1
    assert gateway.cli("queue", "delete", queue_id).returncode == 0
    # The sender is told; the DSN is internal mail, so it lands in the outbox.
    [dsn] = gateway.wait_outbox(1)
    assert b"multipart/report" in dsn.read_bytes() and b"X-Envelope-To: signo@brondby.dk" \
        in dsn.read_bytes()
    gateway.wait_queue_empty()
    assert json.loads(gateway.cli("queue", "list", "--json").stdout) == {"messages": []}


def test_retry_of_every_message_on_an_empty_queue_is_no_error(gateway: Daemon):
    """CONTRACT: `queue retry [ID]` exits 0, and 1 only for an unknown ID."""
    result = gateway.cli("queue", "retry")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"retry": "all"}  # the daemon answered, not the spool
    unknown = gateway.cli("queue", "retry", "NOSUCHID")
    assert unknown.returncode == 1 and "NOSUCHID" in unknown.stderr


def test_queue_commands_without_daemon(config: GatewayConfig, daemons):
    config.default_route = f"smtp://127.0.0.1:{free_port()}"
    gateway = start(config, daemons)
    queue_id = gateway.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE)
    wait_deferred(gateway)
    gateway.stop()
    assert gateway.cli("queue", "retry").returncode == 0
    assert gateway.cli("queue", "delete", queue_id).returncode == 0
    listing = json.loads(gateway.cli("queue", "list", "--json").stdout)
    # Only the DSN to the sender is left, waiting for the daemon to deliver it.
    assert [m["sender"] for m in listing["messages"]] == [""]


def test_a_daemon_that_holds_the_spool_but_does_not_answer_means_try_again(
        config: GatewayConfig, daemons):
    """Not an unknown ID (1): nothing could be changed now, so 75, like check's unknown."""
    config.default_route = f"smtp://127.0.0.1:{free_port()}"
    gateway = start(config, daemons)
    queue_id = gateway.send("signo@brondby.dk", ["hm@hotmail.dk"], MESSAGE)
    wait_deferred(gateway)
    gateway.stop()
    holder = Spool(config.spool)
    holder.lock()  # as a daemon whose HTTP API is down would
    try:
        for args in (("retry",), ("retry", queue_id), ("delete", queue_id)):
            result = gateway.cli("queue", *args)
            assert result.returncode == TRY_AGAIN and "does not answer" in result.stderr
    finally:
        assert holder.lock_fd is not None
        os.close(holder.lock_fd)
    assert gateway.cli("queue", "show", queue_id).returncode == 0  # nothing was changed


def test_second_daemon_on_the_same_spool_refuses_to_start(config: GatewayConfig, daemons):
    start(config, daemons)
    other = GatewayConfig(config.root / "other", config.ca)
    other.spool = config.spool  # same queue, other ports
    other.write()
    result = Daemon(other).cli("serve")
    assert result.returncode == 2
    assert "spool.dir" in result.stderr and "another send-sikkert process" in result.stderr


def test_config_check_prints_the_effective_configuration(config: GatewayConfig):
    config.write()
    result = Daemon(config).cli("config", "check")
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["smtp"]["listen"] == [{"host": "127.0.0.1", "port": config.smtp_port}]
    assert effective["departments"][0]["id"] == "aeldreomsorg"
    assert effective["sepo"]["list"] == str(config.root / "sepo.txt")
    assert "is valid" in result.stderr


def test_serve_with_bad_configuration_exits_2_with_one_line(config: GatewayConfig):
    config.write()
    config.path.write_text(config.path.read_text().replace('min_tls = "1.2"',
                                                           'min_tls = "1.1"'))
    gateway = Daemon(config)
    result = gateway.cli("serve")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert str(config.path) in line and "sepo.min_tls" in line


def test_department_key_mismatch_stops_start(config: GatewayConfig, ca):
    other = ca.issue("someone@brondby.dk", key=rsa_key(fresh=True))
    (config.certs / "aeldreomsorg.key").write_bytes(other.key_pem)
    config.write()
    result = Daemon(config).cli("config", "check")
    assert result.returncode == 2
    assert "departments[0].key" in result.stderr and "does not match" in result.stderr
