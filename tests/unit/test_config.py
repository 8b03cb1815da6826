"""Configuration loading: the demo file is valid, and each mistake gets one clear line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import ConfigError, load

DEMO = Path(__file__).parents[2] / "policies" / "gateway.toml"


def test_demo_configuration_loads():
    config = load(DEMO)
    assert config.smtp.listen[0].port == 2525
    assert config.organisation.internal_domains == ("brondby.dk",)
    assert config.departments[0].id == "aeldreomsorg"
    assert config.spool.dir == (DEMO.parent.parent / "var" / "spool").resolve()
    assert config.spool.sync == "filesystem"
    assert config.routes.internal.startswith("file:/")


def write(tmp_path: Path, old: str, new: str) -> Path:
    text = DEMO.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "gateway.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    shutil.copy(DEMO.parent / "sepo.txt", tmp_path / "sepo.txt")
    return path


@pytest.mark.parametrize("old,new,key", [
    ('listen = ["127.0.0.1:2525"]', 'listen = ["127.0.0.1"]', "smtp.listen"),
    ('listen = ["127.0.0.1:2525"]', 'listen = "127.0.0.1:2525"', "smtp.listen"),
    ('max_message_size = 52428800', 'max_message_size = "big"', "smtp.max_message_size"),
    ('relay_networks = ["127.0.0.0/8", "::1/128"]', 'relay_networks = ["10.0.0.300/8"]',
     "smtp.relay_networks"),
    ('default = "file:../var/outbox"', 'default = "smtp://nowhere"', "routes.default"),
    ('min_tls = "1.2"', 'min_tls = "1.0"', "sepo.min_tls"),
    ("subject = '(?P<keyword>[A-Za-z0-9._-]+)%%'", "subject = '(['", "tags.subject"),
    ('backend = "files"', 'backend = "x500"', "directory.backend"),
    ('retry_min = 60', 'retry_min = 60\nretry_mni = 5', "queue.retry_mni"),
    ('id = "aeldreomsorg"', 'id = "ældre omsorg"', "departments[0].id"),
    ('[http]', '[htp]', "htp"),
    ('senders = ["*@brondby.dk"]', 'senders = ["*@brondby.dk"]\nreplies = "department"',
     "departments[0].replies"),
    ('[[departments]]', '[inbound]\nreply_retention = 0\n\n[[departments]]',
     "inbound.reply_retention"),
])
def test_errors_name_file_and_key(tmp_path, old, new, key):
    path = write(tmp_path, old, new)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.key == key
    assert str(e.value).startswith(f"{path.resolve()}: {key}: ") or \
        str(e.value).startswith(f"{path}: {key}: ")


def test_not_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[smtp\nlisten=", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "none.toml")


def test_compose_ldap_configuration_loads():
    config = load(DEMO.parent / "ldap-demo.toml")
    assert config.directory.backend == "ldap"
    assert config.directory.bind_password_file is not None
    assert config.directory.url.startswith("ldap://")


def test_new_sections_have_the_contract_defaults():
    config = load(DEMO)
    assert config.smtp.max_connections == 1000
    assert config.smtp.max_connections_per_client == 50
    assert config.smtp.timeout == 300
    assert config.smtp.proxy_protocol is False and config.smtp.trusted_proxies == ()
    assert config.http.tls is not None  # the demo serves the Outlook add-in over HTTPS
    assert config.http.tls.cert.name == "https.pem"
    assert (config.transport_security.dane, config.transport_security.mta_sts) == (False, False)
    assert config.cluster.database == "" and config.cluster.node  # the host name
    assert config.dlp.cpr == "secure"
    assert (config.inbound.enabled, config.inbound.decrypt) == (False, True)
    assert config.addin.public_url == "https://localhost:8025"
    assert config.departments[0].replies == "person"


def test_configuration_is_frozen():
    config = load(DEMO)
    with pytest.raises(ValueError):
        config.smtp.hostname = "other"  # type: ignore[misc]


@pytest.mark.parametrize("old,new,key,message", [
    ("[smtp]", "[smtp]\nproxy_protocol = true", "smtp.trusted_proxies", "load balancers"),
    ("[smtp]", "[smtp]\ntimeout = 0", "smtp.timeout", "greater than 0"),
    ("[smtp]", '[smtp]\nmax_connections = "many"', "smtp.max_connections", "integer"),
    ('cpr = "secure"', 'cpr = "maybe"', "dlp.cpr",
     'must be "secure", "block", "warn" or "off"'),
    ('cpr = "secure"', 'cpr = "secure"\nmax_parts = 0', "dlp.max_parts", "greater than 0"),
    ("[dns]", '[cluster]\ndatabase = "postgresql://gw:secret@db/gw"\n\n[dns]',
     "cluster.database", "must not hold the password"),
    ("[dns]", '[cluster]\ndatabase = "mysql://db/gw"\n\n[dns]', "cluster.database",
     "postgresql://"),
    ('public_url = "https://localhost:8025"', 'public_url = "http://gw.brondby.dk"',
     "addin.public_url", "https://"),
    ('id = "82c42fe1-1b56-4240-b588-b826a6a50405"', 'id = "not-a-guid"', "addin.id", "GUID"),
    ("[dns]", '[inbound]\nenabled = "yes"\n\n[dns]', "inbound.enabled", "true or false"),
    ('stamp = "Sendt', 'replies = "me"\nstamp = "Sendt', "departments[0].replies",
     'must be "person" or "department"'),
    ("[spool]", "[spol]", "spool", "section is missing"),
    ("[spool]", '[spool]\nsync = "fsync"', "spool.sync", 'must be "filesystem" or "files"'),
    ('path = "../certs/directory"\n', "", "directory.path", "required"),
])
def test_new_keys_are_checked(tmp_path, old, new, key, message):
    path = write(tmp_path, old, new)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.key == key
    assert message in e.value.message


def test_learnt_certificates_need_trust_anchors(tmp_path):
    text = DEMO.read_text(encoding="utf-8")
    start, end = text.index("[directory]"), text.index("[[departments]]")
    path = tmp_path / "gateway.toml"
    path.write_text(text[:start] + '[inbound]\nharvest = "learnt"\n\n' + text[end:],
                    encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load(path)
    assert e.value.key == "inbound.harvest" and "trust_anchors" in e.value.message


def test_reply_routing_keys(tmp_path):
    path = write(tmp_path, 'senders = ["*@brondby.dk"]',
                 'senders = ["*@brondby.dk"]\nreplies = "department"\nreply_copy = true')
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("[[departments]]", '[inbound]\nreply_map = "../var/replies"'
                                 "\n\n[[departments]]", 1), encoding="utf-8")
    config = load(path)
    assert config.departments[0].replies == "department" and config.departments[0].reply_copy
    assert config.inbound.reply_map == (tmp_path.parent / "var" / "replies").resolve()
    assert config.inbound.reply_retention == 90 * 86400
