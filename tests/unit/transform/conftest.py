"""Fixtures for the transform tests: a test PKI, a department, OpenSSL and gpgsm."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import DepartmentConfig
from gateway.policy.departments import Department
from tests.support.pki import CA, rsa_key
from tests.unit.transform.tools import STAMP, Gpgsm, OpenSSL, Pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = CA("Test Root CA")
    issuing = CA("Test Issuing CA", parent=root)
    # Fresh keys: with shared keys, "cannot decrypt" would prove nothing.
    pki = Pki(root=root,
              department=issuing.issue("aeldreomsorg@brondby.dk", key=rsa_key(fresh=True)),
              recipient=root.issue("olelsen@dhl.dk", key=rsa_key(fresh=True)),
              hidden=root.issue("skjult@example.dk", key=rsa_key(fresh=True)),
              dir=tmp_path_factory.mktemp("pki"))
    (pki.dir / "ca.pem").write_bytes(root.pem)
    return pki


@pytest.fixture(scope="session")
def department(pki: Pki) -> Department:
    config = DepartmentConfig(id="aeldreomsorg", name="Ældre og Omsorg",
                              mailbox="aeldreomsorg@brondby.dk",
                              cert=Path("aeldreomsorg.pem"), key=Path("aeldreomsorg.key"),
                              stamp=STAMP, senders=("*@brondby.dk",))
    return Department(config=config, certificate=pki.department.cert,
                      chain=tuple(pki.department.chain), key=pki.department.key)


@pytest.fixture(scope="session")
def openssl(pki: Pki) -> OpenSSL:
    return OpenSSL(pki)


@pytest.fixture(scope="session")
def gpgsm(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpgsm]:
    if shutil.which("gpgsm") is None:
        if os.environ.get("CI"):  # scripts/test installs it
            pytest.fail("gpgsm is not installed")
        pytest.skip("gpgsm is not installed")
    home = tmp_path_factory.mktemp("gnupg")
    try:
        yield Gpgsm(home, pki)
    finally:
        # Stop the gpg-agent this home started, and nothing else.
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False,
                       capture_output=True)
