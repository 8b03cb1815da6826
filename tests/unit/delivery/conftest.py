"""TLS material for delivery tests (a CA the client trusts and one it does not), and the
next hop with PIPELINING off and on."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trustme

from tests.support.sink import Hop, SmtpSink


@pytest.fixture(params=[False, True], ids=["lockstep", "pipelining"])
def hop(request: pytest.FixtureRequest) -> Hop:
    """SmtpSink with PIPELINING off and on: a test using it holds for both conversations."""
    return functools.partial(SmtpSink, pipelining=request.param)


@pytest.fixture(scope="session")
def trusted_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def untrusted_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(trusted_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    trusted_ca.cert_pem.write_to_path(str(path))
    return path
