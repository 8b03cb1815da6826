"""Fixtures for scenarios against the real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, GatewayConfig
from tests.support.pki import CA

SAMPLES = Path(__file__).parents[1] / "fixtures" / "samples"


def sample(name: str) -> bytes:
    """A sample message with CRLF line endings, as Exchange sends it."""
    return (SAMPLES / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA("send-sikkert test CA")


@pytest.fixture
def config(tmp_path: Path, ca: CA) -> GatewayConfig:
    return GatewayConfig(tmp_path, ca)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts; all are stopped at the end."""
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


@pytest.fixture
def gateway(config: GatewayConfig, daemons: list[Daemon]) -> Daemon:
    """A running daemon on the test's configuration, written as the test left it."""
    daemon = Daemon(config)
    daemons.append(daemon)
    return daemon.start()
