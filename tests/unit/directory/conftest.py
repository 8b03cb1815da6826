"""Fixtures for the certificate directory tests: a real slapd per test, TLS from one CA."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pki import CA
from tests.support.slapd import Slapd, available


@pytest.fixture(scope="session")
def ldap_ca() -> CA:
    """The CA behind every test slapd's server certificate (and the test recipients')."""
    return CA("Test LDAP CA")


@pytest.fixture
def slapd(tmp_path: Path, ldap_ca: CA) -> Iterator[Slapd]:
    """A running slapd with an empty `c=DK` on ldap:// (StartTLS too) and ldaps://."""
    if not available():
        # scripts/test installs them; only a developer's partial setup may lack them.
        if os.environ.get("CI"):
            pytest.fail("OpenLDAP slapd and ldap-utils are not installed")
        pytest.skip("OpenLDAP slapd and ldap-utils are not installed")
    server = Slapd(tmp_path / "slapd", ca=ldap_ca)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def root() -> CA:
    """A root CA for recipient certificates, shared by a test module."""
    return CA("Test Root CA")


@pytest.fixture(scope="module")
def inter(root: CA) -> CA:
    """An issuing CA below `root`: recipients' certificates usually come from one."""
    return CA("Test Issuing CA", parent=root)
