"""Fixtures for the inbound tests: a CA, a department's identity and a partner outside."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.inbound.cms import KeyHolder
from tests.support.partner import Partner
from tests.support.pki import CA, Issued


@pytest.fixture(scope="session")
def ca() -> CA:
    return CA("Inbound test CA")


@pytest.fixture(scope="session")
def department(ca: CA) -> Issued:
    return ca.issue("aeldreomsorg@brondby.dk")


@pytest.fixture
def holder(department: Issued) -> KeyHolder:
    return KeyHolder("aeldreomsorg", department.cert, department.key)


@pytest.fixture
def partner(tmp_path: Path, ca: CA) -> Iterator[Partner]:
    ole = Partner(tmp_path / "ole", ca.issue("ole@partner.dk"), ca)
    yield ole
    ole.close()
