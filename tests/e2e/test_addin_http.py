"""The people's side of the HTTP listener, over HTTPS: the add-in's manifest (validated
offline), static files with their types and caching, the CSP, /api/departments, and the
HTTPS certificate that SIGHUP replaces."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from email.message import Message
from pathlib import Path

import pytest
from cryptography import x509

from gateway.api.pages import OFFICE_JS_ORIGIN
from tests.support.daemon import ADDIN_ID, Daemon, GatewayConfig
from tests.support.pki import CA, rsa_key

OK, NOT_MODIFIED, NOT_FOUND = 200, 304, 404
NS = {"o": "http://schemas.microsoft.com/office/appforoffice/1.1",
      "bt": "http://schemas.microsoft.com/office/officeappbasictypes/1.0",
      "v10": "http://schemas.microsoft.com/office/mailappversionoverrides",
      "v11": "http://schemas.microsoft.com/office/mailappversionoverrides/1.1"}
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
# The MailApp elements of the appforoffice 1.1 schema, in its sequence; * marks required.
OFFICE_APP_SEQUENCE = ["Id*", "Version*", "ProviderName*", "DefaultLocale*", "DisplayName*",
                       "Description*", "IconUrl", "HighResolutionIconUrl", "SupportUrl",
                       "AppDomains", "Hosts*", "Requirements*", "FormSettings*",
                       "Permissions*", "Rule*", "DisableEntityHighlighting",
                       "VersionOverrides"]
SHORT_STRING_MAX, LONG_STRING_MAX = 125, 250


@pytest.fixture
def config(tmp_path: Path, ca: CA) -> GatewayConfig:
    config = GatewayConfig(tmp_path, ca, https=True)
    config.enable_addin("localhost")
    return config


def get(config: GatewayConfig, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, Message, bytes]:
    """Status, headers (case-insensitive) and body of one GET over HTTPS."""
    url = path if "://" in path else config.http_url + path
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=config.client_tls()) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_manifest_is_a_valid_mail_add_in_whose_every_url_is_served(gateway: Daemon,
                                                                   config: GatewayConfig):
    status, headers, body = get(config, "/addin/manifest.xml")
    assert status == OK and headers["Content-Type"] == "application/xml; charset=utf-8"
    root = ET.fromstring(body)  # well-formed
    assert root.tag == f"{{{NS['o']}}}OfficeApp" and root.get(XSI_TYPE) == "MailApp"
    names = [child.tag.split("}")[1] for child in root]
    order = [e.rstrip("*") for e in OFFICE_APP_SEQUENCE]
    assert names == [n for n in order if n in names], "elements out of the schema's order"
    assert {e.rstrip("*") for e in OFFICE_APP_SEQUENCE if e.endswith("*")} <= set(names)
    assert root.findtext("o:Id", namespaces=NS) == ADDIN_ID
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", root.findtext("o:Version", namespaces=NS))
    assert root.find("o:Hosts/o:Host", NS).get("Name") == "Mailbox"
    base = root.find("o:Requirements/o:Sets/o:Set", NS)
    assert (base.get("Name"), base.get("MinVersion")) == ("Mailbox", "1.8")
    assert root.find("o:FormSettings/o:Form", NS).get(XSI_TYPE) == "ItemEdit"
    assert root.findtext("o:Permissions", namespaces=NS) == "ReadWriteItem"
    assert root.find("o:Rule/o:Rule", NS).get("FormType") == "Edit"

    outer = root.find("v10:VersionOverrides", NS)
    assert outer.get(XSI_TYPE) == "VersionOverridesV1_0"
    inner = outer.find("v11:VersionOverrides", NS)
    assert inner.get(XSI_TYPE) == "VersionOverridesV1_1"
    sets = inner.find("v11:Requirements/bt:Sets", NS)
    assert sets.get("DefaultMinVersion") == "1.12"
    [launch] = inner.iterfind(".//v11:LaunchEvent", NS)
    assert (launch.get("Type"), launch.get("SendMode")) == ("OnMessageSend", "SoftBlock")
    for overrides, ns in ((outer, "v10"), (inner, "v11")):
        [button] = overrides.iterfind(
            f"{ns}:Hosts/{ns}:Host/{ns}:DesktopFormFactor/{ns}:ExtensionPoint/{ns}:OfficeTab/"
            f"{ns}:Group/{ns}:Control", NS)
        assert button.get("id") == "msgComposeOpenPaneButton"
        assert button.find(f"{ns}:Action", NS).get(XSI_TYPE) == "ShowTaskpane"
        # Every resource an element refers to is defined in this VersionOverrides.
        resources = overrides.find(f"{ns}:Resources", NS)
        defined = {e.get("id") for e in resources.iter() if e.get("id")}
        used = {e.get("resid") for e in overrides.iter() if e.get("resid")}
        used -= {e.get("resid") for o in overrides.iterfind(f"{ns}:VersionOverrides", NS)
                 for e in o.iter()}
        assert used and used <= defined, used - defined
        for s in resources.iterfind("bt:ShortStrings/bt:String", NS):
            assert len(s.get("DefaultValue")) <= SHORT_STRING_MAX
        for s in resources.iterfind("bt:LongStrings/bt:String", NS):
            assert len(s.get("DefaultValue")) <= LONG_STRING_MAX

    # Every URL is under public_url, and the running gateway serves each with its type.
    urls = {e.get("DefaultValue") for e in root.iter() if
            (e.get("DefaultValue") or "").startswith("http")}
    public_url = f"https://localhost:{config.http_port}"
    assert len(urls) == 9 and all(u.startswith(public_url + "/") for u in urls)
    types = {".png": "image/png", ".html": "text/html; charset=utf-8",
             ".js": "text/javascript; charset=utf-8", "/": "text/html; charset=utf-8"}
    for url in urls:
        status, headers, content = get(config, url)
        suffix = "/" if url.endswith("/") else Path(url).suffix
        assert (status, headers["Content-Type"]) == (OK, types[suffix]), url
        assert content
    # The names the manifest gives are the ones the scripts use.
    _, _, script = get(config, "/addin/launchevent.js")
    assert f'associate("{launch.get("FunctionName")}"' in script.decode()
    assert '"msgComposeOpenPaneButton"' in script.decode()


def test_the_send_time_script_carries_its_settings_and_the_rules(gateway: Daemon,
                                                                  config: GatewayConfig):
    _, _, body = get(config, "/addin/launchevent.js")
    text = body.decode()
    assert text.startswith(f'var SEND_SIKKERT_CONFIG = {{"base": "https://localhost:'
                           f'{config.http_port}", "header": "X-Send-Sikkert", "subject": '
                           '"(?<keyword>[A-Za-z0-9._-]+)%%", "departments": [{"id": '
                           '"aeldreomsorg", "mailbox": "aeldreomsorg@brondby.dk"}]};')
    for part in ("var SendSikkert =", "var SendSikkertCpr =", "var SendSikkertOnSend ="):
        assert part in text
    assert "import " not in text  # classic Outlook's JavaScript runtime cannot import


def test_without_public_url_there_is_no_add_in(gateway: Daemon, config: GatewayConfig,
                                               daemons: list[Daemon]):
    gateway.stop()
    config.extra = ""
    daemons.append(Daemon(config).start())
    for path in ("/addin/manifest.xml", "/addin/taskpane.html", "/addin/launchevent.js"):
        assert get(config, path)[0] == NOT_FOUND, path
    assert get(config, "/")[0] == OK  # the check page stays


def test_static_files_have_their_types_caching_and_policy(gateway: Daemon,
                                                          config: GatewayConfig):
    cases = {"/": "text/html; charset=utf-8", "/static/rows.js": "text/javascript; charset=utf-8",
             "/static/style.css": "text/css; charset=utf-8", "/static/icon-80.png": "image/png",
             "/addin/taskpane.html": "text/html; charset=utf-8",
             "/addin/taskpane.js": "text/javascript; charset=utf-8",
             "/addin/manifest.xml": "application/xml; charset=utf-8"}
    for path, content_type in cases.items():
        status, headers, _ = get(config, path)
        assert (status, headers["Content-Type"]) == (OK, content_type), path
        assert headers["X-Content-Type-Options"] == "nosniff"
        expected_cache = "public, max-age=86400" if path.endswith(".png") else "no-cache"
        assert headers["Cache-Control"] == expected_cache, path
        # A validator, so that a revalidation costs a 304 and no body.
        status, _, body = get(config, path, {"If-None-Match": headers["ETag"]})
        assert (status, body) == (NOT_MODIFIED, b""), path
        policy = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"]
                      .split(";"))
        assert policy["default-src"] == "'none'"
        assert policy["script-src"] == f"'self' {OFFICE_JS_ORIGIN}"
        assert all("http" not in v for k, v in policy.items() if k != "script-src")
        assert ("frame-ancestors" in policy) == (not path.startswith("/addin/"))
    for path in ("/static/../app.py", "/static/nothing.js", "/static/icon.svg.bak",
                 "/addin/../pages.py"):
        assert get(config, path)[0] == NOT_FOUND, path


def test_departments_in_configuration_order(config: GatewayConfig, daemons: list[Daemon]):
    config.ca.issue("jobcenter@brondby.dk").write(config.certs / "jobcenter.pem",
                                                  config.certs / "jobcenter.key")
    config.departments = "\n".join(f"""[[departments]]
id = "{i}"
name = "{name}"
mailbox = "{i}@brondby.dk"
cert = "{config.certs / (i + '.pem')}"
key = "{config.certs / (i + '.key')}"
senders = ["*@brondby.dk"]
""" for i, name in (("jobcenter", "Jobcenter"), ("aeldreomsorg", "Ældre og Omsorg")))
    gateway = Daemon(config)
    daemons.append(gateway)
    gateway.start()
    status, headers, _ = get(config, "/api/departments")
    assert (status, headers["Cache-Control"]) == (OK, "no-store")
    assert gateway.http("/api/departments") == (OK, {
        "departments": [
            {"id": "jobcenter", "name": "Jobcenter", "mailbox": "jobcenter@brondby.dk"},
            {"id": "aeldreomsorg", "name": "Ældre og Omsorg",
             "mailbox": "aeldreomsorg@brondby.dk"}],
        "header": "X-Send-Sikkert"})


def served_certificate(config: GatewayConfig) -> int:
    """The serial number of the certificate a new HTTPS connection gets."""
    context = config.client_tls()
    with socket.create_connection(("127.0.0.1", config.http_port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_sighup_replaces_the_https_certificate_and_keeps_it_when_the_new_one_is_bad(
        gateway: Daemon, config: GatewayConfig):
    first = served_certificate(config)
    assert first == config.https_cert.cert.serial_number
    renewed = config.ca.issue(common_name="localhost", dns_names=["localhost"],
                              ips=["127.0.0.1"], server=True)
    renewed.write(config.certs / "https.pem", config.certs / "https.key")
    with urllib.request.urlopen(config.http_url + "/healthz", timeout=10,
                                context=config.client_tls()):
        pass
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: served_certificate(config) == renewed.cert.serial_number)

    (config.certs / "https.pem").write_text("not a certificate\n")
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in gateway.logs())
    assert "http.tls.cert" in gateway.logs()
    assert served_certificate(config) == renewed.cert.serial_number


def test_config_check_refuses_a_certificate_that_does_not_match_its_key(
        gateway: Daemon, config: GatewayConfig):
    other = config.ca.issue(common_name="localhost", server=True, key=rsa_key(fresh=True))
    (config.certs / "https.key").write_bytes(other.key_pem)
    result = gateway.cli("config", "check")
    assert result.returncode == 2
    assert "http.tls.cert" in result.stderr



def test_queue_commands_reach_a_daemon_that_speaks_https(gateway: Daemon):
    """`queue retry` asks the running daemon over its HTTPS listener, never the spool."""
    result = gateway.cli("queue", "retry")
    assert "does not answer" not in result.stderr, result.stderr
    assert "applies when the daemon starts" not in result.stdout
