"""Department identities: PEM and PKCS#12, mismatched keys, expiry, the expiry gauge."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from prometheus_client import REGISTRY

from gateway.config import ConfigError, DepartmentConfig
from gateway.policy.departments import load_departments
from tests.support.pki import CA, NOW, rsa_key


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("Department root", parent=None)


def config(cert: Path, key: Path, **kw) -> DepartmentConfig:
    return DepartmentConfig(id=kw.pop("id", "aeldreomsorg"), name="Ældre og Omsorg",
                            mailbox="aeldreomsorg@brondby.dk", cert=cert, key=key, stamp="",
                            senders=("*@brondby.dk",), **kw)


def test_pem_with_chain(tmp_path, ca):
    intermediate = CA("Department intermediate", parent=ca)
    issued = intermediate.issue("aeldreomsorg@brondby.dk")
    issued.write(tmp_path / "d.pem", tmp_path / "d.key")
    [dep] = load_departments((config(tmp_path / "d.pem", tmp_path / "d.key"),), "gw.toml")
    assert dep.certificate == issued.cert
    assert dep.chain == (intermediate.cert,)
    assert dep.allows("Lela@Brondby.dk") and not dep.allows("x@other.dk")
    value = REGISTRY.get_sample_value("sendsikkert_department_cert_expiry_timestamp_seconds",
                                      {"department": "aeldreomsorg"})
    assert value == issued.cert.not_valid_after_utc.timestamp()


def test_pkcs12_with_passphrase_from_environment(tmp_path, ca, monkeypatch):
    issued = ca.issue("aeldreomsorg@brondby.dk")
    p12 = pkcs12.serialize_key_and_certificates(
        b"dep", issued.key, issued.cert, [ca.cert],
        serialization.BestAvailableEncryption(b"hemmelig"))
    (tmp_path / "d.p12").write_bytes(p12)
    dep_config = config(tmp_path / "d.p12", tmp_path / "d.p12", key_passphrase_env="DEP_PASS")
    with pytest.raises(ConfigError, match="DEP_PASS is not set"):
        load_departments((dep_config,), "gw.toml")
    monkeypatch.setenv("DEP_PASS", "forkert")
    with pytest.raises(ConfigError, match=r"departments\[0\]\.key: cannot open PKCS#12"):
        load_departments((dep_config,), "gw.toml")
    monkeypatch.setenv("DEP_PASS", "hemmelig")
    [dep] = load_departments((dep_config,), "gw.toml")
    assert dep.certificate == issued.cert and dep.chain == (ca.cert,)


def test_key_that_does_not_match(tmp_path, ca):
    ca.issue("aeldreomsorg@brondby.dk").write(tmp_path / "d.pem")
    other = ca.issue("x@brondby.dk", key=rsa_key(fresh=True))
    (tmp_path / "d.key").write_bytes(other.key_pem)
    with pytest.raises(ConfigError) as e:
        load_departments((config(tmp_path / "d.pem", tmp_path / "d.key"),), "gw.toml")
    assert e.value.key == "departments[0].key" and "does not match" in str(e.value)


def test_expired_certificate_refused(tmp_path, ca):
    ca.issue("aeldreomsorg@brondby.dk", not_before=NOW - timedelta(days=400),
             not_after=NOW - timedelta(days=1)).write(tmp_path / "d.pem", tmp_path / "d.key")
    with pytest.raises(ConfigError, match=r"departments\[0\]\.cert: .* expired"):
        load_departments((config(tmp_path / "d.pem", tmp_path / "d.key"),), "gw.toml")


def test_warns_thirty_days_before_expiry(tmp_path, ca, caplog):
    ca.issue("aeldreomsorg@brondby.dk", not_after=NOW + timedelta(days=20)).write(
        tmp_path / "d.pem", tmp_path / "d.key")
    with caplog.at_level(logging.WARNING):
        load_departments((config(tmp_path / "d.pem", tmp_path / "d.key"),), "gw.toml")
    assert "renew it now" in caplog.text


def test_missing_and_unreadable_files(tmp_path, ca):
    with pytest.raises(ConfigError, match=r"departments\[0\]\.key: cannot read"):
        load_departments((config(tmp_path / "none.pem", tmp_path / "none.key"),), "gw.toml")
    (tmp_path / "d.key").write_text("not a key")
    ca.issue("aeldreomsorg@brondby.dk").write(tmp_path / "d.pem")
    with pytest.raises(ConfigError, match="cannot read private key"):
        load_departments((config(tmp_path / "d.pem", tmp_path / "d.key"),), "gw.toml")


def test_ec_key_refused(tmp_path, ca):
    ca.issue("aeldreomsorg@brondby.dk", ec_key=True).write(tmp_path / "d.pem", tmp_path / "d.key")
    with pytest.raises(ConfigError, match="not an RSA key"):
        load_departments((config(tmp_path / "d.pem", tmp_path / "d.key"),), "gw.toml")
