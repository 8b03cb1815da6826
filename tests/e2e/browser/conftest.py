"""Browser tests: Debian's Chromium, headless, driven by Playwright, against the real daemon.

Each test gets a fresh user-data-dir. The gateway speaks HTTPS with a certificate from
the test CA; Chromium trusts exactly that certificate's key (its SPKI hash) and nothing
else. Office.js is Outlook's, so its URL is answered with our stand-in (office_stub.js).
axe-core (npm, node_modules/) is evaluated in the page for the WCAG 2.1 A/AA check.
Screenshots go to $SEND_SIKKERT_SCREENSHOTS, by default var/screenshots/.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Page, sync_playwright

from tests.support.daemon import GatewayConfig
from tests.support.pki import CA
from tests.support.sink import free_port

ROOT = Path(__file__).parents[3]
CHROMIUM = os.environ.get("SEND_SIKKERT_CHROMIUM", "/usr/bin/chromium")
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
OFFICE_JS = "https://appsforoffice.microsoft.com/**"
OFFICE_STUB = Path(__file__).with_name("office_stub.js")
SCREENSHOTS = Path(os.environ.get("SEND_SIKKERT_SCREENSHOTS", ROOT / "var" / "screenshots"))
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

# Chromium's own switches for a quiet, reproducible headless run.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def spki_hash(config: GatewayConfig) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the gateway's HTTPS certificate."""
    spki = config.https_cert.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class Browser:
    """One Chromium with its own profile, trusting one gateway's certificate."""

    def __init__(self, playwright, profile: Path, config: GatewayConfig) -> None:
        self.config = config
        self.context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS + [f"--ignore-certificate-errors-spki-list={spki_hash(config)}"],
            viewport={"width": 900, "height": 900}, locale="da-DK")
        self.context.route(OFFICE_JS, lambda route: route.fulfill(
            path=str(OFFICE_STUB), content_type="text/javascript; charset=utf-8"))
        self.violations: list[dict] = []

    def page(self, path: str, office: dict | None = None) -> Page:
        """Open a page of the gateway; `office` is the mail the Office.js stand-in holds."""
        page = self.context.new_page()
        if path.startswith("/addin/"):
            page.set_viewport_size({"width": 380, "height": 900})  # an Outlook task pane
        if office is not None:
            page.add_init_script(f"window.__officeState = {json.dumps(office)};")
        # Any Content Security Policy violation of our own pages fails the test.
        page.add_init_script("""window.__csp = [];
            document.addEventListener('securitypolicyviolation', e =>
              window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));""")
        page.goto(self.config.http_url + path)
        return page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def browser(tmp_path: Path, config: GatewayConfig) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        b = Browser(playwright, tmp_path / "chromium-profile", config)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def config(tmp_path: Path, ca: CA) -> GatewayConfig:
    config = GatewayConfig(tmp_path, ca, https=True)
    config.enable_addin()
    return config


def axe_violations(page: Page) -> list[dict]:
    """Run axe-core on the page as it is now; the WCAG 2.1 A/AA violations it finds."""
    assert AXE.exists(), f"{AXE} is missing: run scripts/setup --test (npm ci)"
    page.evaluate(AXE.read_text(encoding="utf-8"))
    result = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})",
                           WCAG_21_AA)
    return [{"id": v["id"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]]} for v in result["violations"]]


def csp_violations(page: Page) -> list[str]:
    return page.evaluate("window.__csp")


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def seed_four_colours(config: GatewayConfig) -> dict[str, str]:
    """A directory in which the addresses below get the four colours, each honestly.

    Revocation is hard-fail: olelsen@dhl.dk's CA publishes its CRL (a file), so its
    certificate is good (grøn); the partner CA's CRL is at a URL where nothing answers,
    so its holder's status cannot be known (grå), exactly as when a CA's server is down.
    """
    crl = config.certs / "test-ca.crl"
    crl.write_bytes(config.ca.crl())
    config.ca.issue("olelsen@dhl.dk").write(config.certs / "directory" / "olelsen.pem")
    partner = CA("Partnerkommune CA")
    (config.certs / "trust" / "partner.pem").write_bytes(partner.pem)
    partner.issue("sagsbehandler@partner.dk").write(
        config.certs / "directory" / "sagsbehandler.pem")
    config.directory = f"""[directory]
backend = "files"
path = "{config.certs / 'directory'}"
trust_anchors = ["{config.certs / 'trust'}/*.pem"]
revocation = "hard-fail"
crls = ["{crl}", "http://127.0.0.1:{free_port()}/partner.crl"]
"""
    return {"turkis": "gildhoej@brondby.dk", "grøn": "olelsen@dhl.dk",
            "rød": "hm@hotmail.dk", "grå": "sagsbehandler@partner.dk"}
