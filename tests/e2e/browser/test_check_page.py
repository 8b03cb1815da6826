"""The check page at / in a real Chromium: four colours, alternatives, keyboard, axe-core."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.browser.conftest import (
    Browser,
    axe_violations,
    csp_violations,
    screenshot,
    seed_four_colours,
)
from tests.support.daemon import Daemon, GatewayConfig


@pytest.fixture
def seeded(config: GatewayConfig) -> dict[str, str]:
    return seed_four_colours(config)


def rows(page: Page) -> list[dict]:
    return page.eval_on_selector_all("#results > li", """items => items.map(li => ({
        colour: li.dataset.colour, cls: li.dataset.class,
        address: li.querySelector('.row__address').textContent,
        label: li.querySelector('.row__label').textContent,
        reason: li.querySelector('.row__reason').textContent,
        alternatives: [...li.querySelectorAll('.row__alternatives li')].map(x => x.textContent),
        icon: li.querySelector('svg path').getAttribute('d')}))""")


def test_four_seeded_addresses_get_their_four_colours(seeded: dict[str, str], gateway: Daemon,
                                                      browser: Browser):
    page = browser.page("/")
    # Pasted from Outlook's To field, typed and sent by keyboard only.
    page.keyboard.press("Tab")
    expect(page.locator("#til")).to_be_focused()
    page.keyboard.type(f'"Gildhøj, Plejecenter" <{seeded["turkis"]}>; {seeded["grøn"]}, '
                       f'{seeded["rød"]}\n{seeded["grå"]}')
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Tjek")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#results > li")).to_have_count(4)
    found = rows(page)
    assert [(r["address"], r["colour"]) for r in found] == [
        (seeded["turkis"], "turkis"), (seeded["grøn"], "groen"),
        (seeded["rød"], "roed"), (seeded["grå"], "graa")]
    assert [r["label"] for r in found] == ["Intern adresse", "Signeret og krypteret",
                                           "Sikker mail er ikke mulig", "Kan ikke afgøres lige nu"]
    assert "brondby.dk is an internal domain" in found[0]["reason"]
    assert "certificate" in found[1]["reason"]
    assert "revocation status unavailable" in found[3]["reason"]
    # Colour is never the only signal: every colour has a shape of its own.
    assert len({r["icon"] for r in found}) == 4
    red = found[2]["alternatives"]
    for expected in ("sikker mailadresse", "Digital Post", "Ring", "følsomme", "vejledning"):
        assert any(expected in a for a in red), (expected, red)
    assert all(not r["alternatives"] for r in found if r["colour"] != "roed")
    expect(page.get_by_role("status")).to_have_text(
        "4 adresser tjekket: 1 intern, 1 kan få sikker mail, 1 kan ikke få sikker mail, "
        "1 kan ikke afgøres.")
    assert axe_violations(page) == []
    assert csp_violations(page) == []
    screenshot(page, "check-page")


def test_tunnel_is_green_and_a_malformed_address_is_named(gateway: Daemon, browser: Browser):
    page = browser.page("/")
    page.get_by_label("Til").fill("sikkermail@ast.dk nobody@ bare-word")
    page.get_by_role("button", name="Tjek").click()
    expect(page.locator("#results > li")).to_have_count(2)
    found = rows(page)
    assert (found[0]["colour"], found[0]["label"]) == ("groen", "Tunnelkryptering")
    assert (found[1]["address"], found[1]["label"]) == ("nobody@", "Ikke en gyldig adresse")
    expect(page.locator("#til-fejl")).to_have_text(
        "Sprunget over, ikke en mailadresse: bare-word")
    expect(page.locator("#til")).to_have_attribute("aria-invalid", "true")
    assert axe_violations(page) == []
    screenshot(page, "check-page-tunnel-invalid")


def test_an_empty_field_asks_for_an_address(gateway: Daemon, browser: Browser):
    page = browser.page("/")
    page.get_by_role("button", name="Tjek").click()
    expect(page.locator("#til-fejl")).to_have_text("Skriv mindst én mailadresse.")
    expect(page.locator("#til")).to_be_focused()
    expect(page.locator("#results > li")).to_have_count(0)
    screenshot(page, "check-page-empty")


def test_an_unreachable_gateway_is_grey_and_said(gateway: Daemon, browser: Browser):
    page = browser.page("/")
    gateway.stop()
    page.get_by_label("Til").fill("olelsen@dhl.dk")
    page.get_by_role("button", name="Tjek").click()
    expect(page.get_by_role("status")).to_have_text(
        "Tjekket kunne ikke køre: gatewayen svarer ikke. Prøv igen om lidt.")
    [row] = rows(page)
    assert (row["colour"], row["label"]) == ("graa", "Kan ikke afgøres lige nu")
    expect(page.get_by_role("button", name="Tjek")).to_be_enabled()
    screenshot(page, "check-page-unreachable")
