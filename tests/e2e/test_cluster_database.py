"""The daemon with `cluster.database`: starts and delivers without it, says why, heals.

A PostgreSQL of this module's own (the tests stop and start it); the password reaches
the daemon from a file or an environment variable, never the configuration.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.support.daemon import SCRIPT, Daemon, GatewayConfig
from tests.support.postgres import ROLE_PASSWORD, Postgres

CONFIG_ERROR = 2
READY = 200
MESSAGE = b"From: a@brondby.dk\r\nTo: b@hotmail.dk\r\nSubject: hej\r\n\r\nhej\r\n"


@pytest.fixture
def own_pg(private_pg: Postgres) -> Postgres:
    return private_pg


@pytest.fixture
def clustered(config: GatewayConfig, own_pg: Postgres) -> Iterator[GatewayConfig]:
    password = config.root / "db-password"
    password.write_text(ROLE_PASSWORD + "\n")
    config.extra = f"""
[cluster]
database = "{own_pg.url(own_pg.create_database())}"
database_password_file = "{password}"
node = "gw-a"
"""
    yield config
    own_pg.start()


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


def test_without_its_database_a_node_still_takes_and_delivers_mail(
        clustered: GatewayConfig, own_pg: Postgres, daemons: list[Daemon]):
    own_pg.stop()
    gateway = Daemon(clustered)
    daemons.append(gateway)
    gateway.start()
    gateway.send("a@brondby.dk", ["b@hotmail.dk"], MESSAGE)
    gateway.wait_outbox(1)
    status, body = gateway.http("/readyz")
    assert status == READY, body
    [warning] = body["warnings"]
    assert "cluster database unreachable" in warning and "refused" in warning.lower()
    assert gateway.metric("sendsikkert_cluster_database_errors_total") > 0

    own_pg.start()
    wait_for(lambda: "warnings" not in gateway.http("/readyz")[1], 20, "the database healed")
    logs = gateway.logs()
    assert "cluster database ready (schema version" in logs
    assert all(" gw-a " in line for line in logs.splitlines() if line[:1].isdigit())


def test_the_password_may_come_from_the_environment(clustered: GatewayConfig,
                                                    daemons: list[Daemon]):
    clustered.extra = clustered.extra.replace(
        f'database_password_file = "{clustered.root / "db-password"}"',
        'database_password_env = "SENDSIKKERT_DB_PASSWORD"')
    gateway = Daemon(clustered, env={"SENDSIKKERT_DB_PASSWORD": ROLE_PASSWORD})
    daemons.append(gateway)
    gateway.start()
    wait_for(lambda: gateway.http("/readyz")[1] == {"status": "ready"}, 20, "ready")


def test_an_unreadable_password_file_is_a_configuration_error(clustered: GatewayConfig):
    (clustered.root / "db-password").unlink()
    clustered.write()
    for command in (["serve"], ["config", "check"]):
        result = subprocess.run([SCRIPT, "--config", str(clustered.path), *command],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == CONFIG_ERROR, command
        assert "cluster.database_password_file: cannot read" in result.stderr
