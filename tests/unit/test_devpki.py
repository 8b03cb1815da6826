"""dev_init: a development PKI that the gateway, openssl and the directory all accept."""

from __future__ import annotations

import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from gateway.config import Config, ConfigError, load
from gateway.devpki import DEMO_RECIPIENTS, dev_init
from gateway.directory.files import FilesSource, read_certificates
from gateway.directory.validate import RecipientValidator
from gateway.model import RecipientClass
from gateway.policy.departments import load_departments

CONFIG = """
[smtp]
listen = ["127.0.0.1:2525"]
hostname = "sikkermail.example.dk"
[spool]
dir = "var/spool"
[organisation]
name = "Brøndby Kommune"
internal_domains = ["brondby.dk"]
[routes]
internal = "file:var/outbox"
[sepo]
list = "sepo.txt"
[directory]
backend = "files"
path = "certs/directory"
trust_anchors = ["certs/trust/*.pem"]

[[departments]]
id = "aeldreomsorg"
name = "Ældre og Omsorg"
mailbox = "aeldreomsorg@brondby.dk"
cert = "certs/dev/aeldreomsorg.pem"
key = "certs/dev/aeldreomsorg.key"
senders = ["*@brondby.dk"]

[[departments]]
id = "jobcenter"
name = "Jobcenter"
mailbox = "jobcenter@brondby.dk"
cert = "elsewhere/jobcenter/cert.pem"
key = "elsewhere/jobcenter/key.pem"
senders = ["*@brondby.dk"]
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path, list[Path]]:
    """One PKI for the module: key generation is the slow part."""
    base = tmp_path_factory.mktemp("devpki")
    (base / "gateway.toml").write_text(CONFIG, encoding="utf-8")
    config = load(base / "gateway.toml")
    return config, base / "certs", dev_init(config, base / "certs")


def test_writes_every_file(pki):
    config, out, written = pki
    expected = {out / "dev" / "ca.pem", out / "dev" / "ca.key", out / "trust" / "dev-ca.pem",
                out / "directory" / "olelsen_at_dhl.dk.pem",
                out / "directory" / "borger_at_example.dk.pem",
                out / "dev" / "recipients" / "olelsen@dhl.dk.key",
                out / "dev" / "recipients" / "borger@example.dk.key"}
    expected |= {p for dep in config.departments for p in (dep.cert, dep.key)}
    assert set(written) == expected
    for path in written:
        if path.suffix == ".key":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (out / "trust" / "dev-ca.pem").read_bytes() == (out / "dev" / "ca.pem").read_bytes()
    ca = read_certificates(out / "dev" / "ca.pem")[0]
    assert ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == \
        "send-sikkert dev CA"
    assert ca.public_key().key_size >= 2048


def test_department_certificates(pki):
    config, out, _ = pki
    for dep in config.departments:
        certs = read_certificates(dep.cert)
        assert certs[1:] == read_certificates(out / "dev" / "ca.pem")  # the chain follows
        leaf = certs[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.RFC822Name) == [dep.mailbox]
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature and usage.key_encipherment
        assert x509.ExtendedKeyUsageOID.EMAIL_PROTECTION in \
            leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert 700 < (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days < 740
        result = subprocess.run(["openssl", "verify", "-CAfile", str(out / "dev" / "ca.pem"),
                                 str(dep.cert)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    departments = load_departments(config.departments, str(config.path))
    assert [d.mailbox for d in departments] == ["aeldreomsorg@brondby.dk", "jobcenter@brondby.dk"]


async def test_demo_recipients_are_smime(pki):
    config, out, _ = pki
    source = FilesSource(config.directory.path)
    validator = RecipientValidator(read_certificates(out / "trust" / "dev-ca.pem"))
    try:
        for address in DEMO_RECIPIENTS:
            choice = await validator.choose(address, await source.lookup(address))
            assert choice.cls == RecipientClass.SMIME, (address, choice.reason)
    finally:
        validator.close()


def test_recipient_key_opens_what_was_encrypted(pki, tmp_path):
    _, out, _ = pki
    cert = out / "directory" / "olelsen_at_dhl.dk.pem"
    key = out / "dev" / "recipients" / "olelsen@dhl.dk.key"
    message = b"Content-Type: text/plain\r\n\r\nHej Ole\r\n"
    encrypted = subprocess.run(["openssl", "cms", "-encrypt", "-aes256", str(cert)],
                               input=message, capture_output=True, check=True).stdout
    opened = subprocess.run(["openssl", "cms", "-decrypt", "-recip", str(cert), "-inkey", str(key)],
                            input=encrypted, capture_output=True, check=True).stdout
    assert b"Hej Ole" in opened


def test_running_again_keeps_what_is_current(pki):
    config, out, _ = pki
    ca_before = (out / "dev" / "ca.pem").read_bytes()
    assert dev_init(config, out) == []
    jobcenter = config.departments[1]
    jobcenter.cert.unlink()
    assert set(dev_init(config, out)) == {jobcenter.cert, jobcenter.key}
    assert (out / "dev" / "ca.pem").read_bytes() == ca_before
    result = subprocess.run(["openssl", "verify", "-CAfile", str(out / "dev" / "ca.pem"),
                             str(jobcenter.cert)], capture_output=True)
    assert result.returncode == 0


def test_new_ca_when_its_key_is_gone(tmp_path):
    (tmp_path / "gateway.toml").write_text(CONFIG.split("[[departments]]")[0], encoding="utf-8")
    config = load(tmp_path / "gateway.toml")
    out = tmp_path / "certs"
    dev_init(config, out)
    old_ca = (out / "dev" / "ca.pem").read_bytes()
    (out / "dev" / "ca.key").unlink()
    written = dev_init(config, out)
    assert (out / "dev" / "ca.pem").read_bytes() != old_ca
    # Everything the old CA issued is issued again by the new one.
    assert out / "directory" / "olelsen_at_dhl.dk.pem" in written
    assert out / "trust" / "dev-ca.pem" in written


def test_renews_what_expires_soon(pki):
    config, out, _ = pki
    ca_before = (out / "dev" / "ca.pem").read_bytes()
    leaf = read_certificates(config.departments[0].cert)[0]
    soon = leaf.not_valid_after_utc - timedelta(days=10)
    written = dev_init(config, out, now=soon)
    assert config.departments[0].cert in written
    assert out / "directory" / "borger_at_example.dk.pem" in written
    assert (out / "dev" / "ca.pem").read_bytes() == ca_before  # the CA has years left
    renewed = read_certificates(config.departments[0].cert)[0]
    assert renewed.not_valid_after_utc > leaf.not_valid_after_utc
    assert config.departments[0].cert in dev_init(config, out)  # back to today, for the others


def test_refuses_keys_it_cannot_write(tmp_path):
    text = CONFIG.replace('key = "elsewhere/jobcenter/key.pem"', 'key = "jobcenter.p12"')
    (tmp_path / "gateway.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        dev_init(load(tmp_path / "gateway.toml"), tmp_path / "certs")
    assert error.value.key == "departments[1].key"
    assert not (tmp_path / "certs").exists()


def test_https_certificate_for_the_listener_and_the_addin_host(tmp_path: Path):
    """With [http.tls], the listener's certificate: serverAuth, loopback and the public host."""
    text = CONFIG.replace("[spool]", '[http]\nlisten = "127.0.0.1:8025"\n[http.tls]\n'
                          'cert = "certs/dev/https.pem"\nkey = "certs/dev/https.key"\n'
                          '[addin]\npublic_url = "https://sikkermail.brondby.dk"\n'
                          'id = "82c42fe1-1b56-4240-b588-b826a6a50405"\n[spool]')
    (tmp_path / "gateway.toml").write_text(text, encoding="utf-8")
    config = load(tmp_path / "gateway.toml")
    written = dev_init(config, tmp_path / "certs")
    cert_path = tmp_path / "certs" / "dev" / "https.pem"
    assert {cert_path, tmp_path / "certs" / "dev" / "https.key"} <= set(written)
    leaf, ca = x509.load_pem_x509_certificates(cert_path.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "sikkermail.brondby.dk"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    leaf.verify_directly_issued_by(ca)
    assert dev_init(config, tmp_path / "certs") == []  # a second run keeps what is good
    # openssl, as a browser would, accepts it for the public host name.
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "certs" / "dev" /
                                                                  "ca.pem"),
                             "-verify_hostname", "sikkermail.brondby.dk", "-purpose",
                             "sslserver", str(cert_path)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
