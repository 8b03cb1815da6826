"""The Outlook task pane in a real Chromium, with Office.js replaced by our stand-in."""

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

TWO_DEPARTMENTS = """
[[departments]]
id = "aeldreomsorg"
name = "Ældre og Omsorg"
mailbox = "aeldreomsorg@brondby.dk"
cert = "{certs}/aeldreomsorg.pem"
key = "{certs}/aeldreomsorg.key"
senders = ["*@brondby.dk"]

[[departments]]
id = "ablehaven"
name = "Plejecenter Ablehaven"
mailbox = "ablehaven@brondby.dk"
cert = "{certs}/ablehaven.pem"
key = "{certs}/ablehaven.key"
senders = ["*@brondby.dk"]
"""


@pytest.fixture
def seeded(config: GatewayConfig) -> dict[str, str]:
    config.ca.issue("ablehaven@brondby.dk").write(config.certs / "ablehaven.pem",
                                                  config.certs / "ablehaven.key")
    config.departments = TWO_DEPARTMENTS.format(certs=config.certs)
    return seed_four_colours(config)


def contact(address: str, name: str) -> dict[str, str]:
    return {"emailAddress": address, "displayName": name}


def pane_rows(page: Page) -> list[tuple[str, ...]]:
    found = page.eval_on_selector_all("#modtagere > li", """items => items.map(li => [
        li.querySelector('.row__kind').textContent, li.querySelector('.row__address').textContent,
        li.dataset.colour])""")
    return [tuple(r) for r in found]


def test_every_recipient_is_checked_and_red_keeps_the_button_grey(
        seeded: dict[str, str], gateway: Daemon, browser: Browser):
    page = browser.page("/addin/taskpane.html", office={
        "to": [contact(seeded["turkis"], "Plejecenter Gildhøj")],
        "cc": [contact("sikkermail@ast.dk", "Arbejdstilsynet"),
               contact(seeded["grøn"], "Ole Elsen")],
        # Picked from the person's contacts: only the display name is what staff see.
        "bcc": [contact(seeded["rød"], "Hanne Madsen")],
    })
    expect(page.locator("#modtagere > li")).to_have_count(4)
    assert pane_rows(page) == [("Til:", seeded["turkis"], "turkis"),
                               ("Cc:", "sikkermail@ast.dk", "groen"),
                               ("Cc:", seeded["grøn"], "groen"),
                               ("Bcc:", seeded["rød"], "roed")]
    send = page.get_by_role("button", name="Send Sikkert")
    expect(send).to_be_disabled()
    expect(page.locator("#send-hjaelp")).to_have_text(
        f"Send Sikkert er spærret: {seeded['rød']} kan ikke få sikker mail lige nu.")
    red = page.locator("#modtagere > li.row--roed")
    expect(red.locator(".row__alternatives li")).to_have_count(5)
    expect(red).to_contain_text("Digital Post")
    expect(red).to_contain_text("vejledning til eksterne samarbejdspartnere")
    expect(page.get_by_label("Sikker mail afsender")).to_have_value("aeldreomsorg")
    assert axe_violations(page) == []
    assert csp_violations(page) == []
    screenshot(page, "taskpane-red")

    # The person removes the red recipient: Outlook tells the pane, the button turns on.
    page.evaluate("() => { __office.setRecipients('bcc', []); __office.fireRecipientsChanged(); }")
    expect(page.locator("#modtagere > li")).to_have_count(3)
    expect(send).to_be_enabled()
    expect(page.locator("#send-hjaelp")).to_have_text("Alle modtagere kan få mailen sikkert.")
    send.click()
    expect(page.locator("#send-status")).to_contain_text(
        "Mailen er markeret Send Sikkert via Ældre og Omsorg (aeldreomsorg@brondby.dk).")
    assert page.evaluate("__office.headers()") == {"X-Send-Sikkert": "aeldreomsorg"}
    assert axe_violations(page) == []
    screenshot(page, "taskpane")


def test_grey_keeps_the_button_grey_and_tjek_checks_another_address(
        seeded: dict[str, str], gateway: Daemon, browser: Browser):
    page = browser.page("/addin/taskpane.html", office={
        "to": [contact(seeded["grå"], "Sagsbehandler, Partnerkommune")],
        "cc": [{"emailAddress": "", "displayName": "Kontaktgruppe uden adresse"}]})
    expect(page.locator("#modtagere > li")).to_have_count(2)
    assert [c for _, _, c in pane_rows(page)] == ["graa", "graa"]
    expect(page.locator("#modtagere")).to_contain_text("Kan ikke afgøres lige nu")
    expect(page.locator("#modtagere")).to_contain_text("Outlook oplyser ingen mailadresse")
    assert page.locator("#modtagere [lang=en]").count() == 1  # only the gateway's reason
    expect(page.get_by_role("button", name="Send Sikkert")).to_be_disabled()
    page.get_by_role("textbox", name="Adresse").fill(seeded["grøn"])
    page.get_by_role("textbox", name="Adresse").press("Enter")
    expect(page.locator("#tjek-resultat > li.row--groen")).to_contain_text(
        "Signeret og krypteret")
    expect(page.get_by_role("button", name="Send Sikkert")).to_be_disabled()  # only recipients
    assert axe_violations(page) == []
    screenshot(page, "taskpane-grey")


def test_the_saved_default_department_is_preselected(seeded: dict[str, str], gateway: Daemon,
                                                     browser: Browser):
    office = {"to": [contact(seeded["turkis"], "Gildhøj")]}
    page = browser.page("/addin/taskpane.html", office=office)
    chooser = page.get_by_label("Sikker mail afsender")
    expect(chooser).to_have_value("aeldreomsorg")  # nothing saved yet: the first
    expect(page.get_by_label("Gem som standard")).not_to_be_checked()
    chooser.select_option("ablehaven")
    page.get_by_label("Gem som standard").check()
    expect(page.locator("#send-status")).to_have_text(
        "Plejecenter Ablehaven (ablehaven@brondby.dk) er gemt som standard.")
    assert page.evaluate("__office.savedRoaming()") == {"department": "ablehaven"}
    page.close()

    # Another mail, the pane opened again: the saved department is chosen.
    page = browser.page("/addin/taskpane.html", office=office)
    expect(page.get_by_label("Sikker mail afsender")).to_have_value("ablehaven")
    expect(page.get_by_label("Gem som standard")).to_be_checked()
    expect(page.get_by_role("button", name="Send Sikkert")).to_be_enabled()
    page.get_by_role("button", name="Send Sikkert").click()
    expect(page.locator("#send-status")).to_contain_text("via Plejecenter Ablehaven")
    assert page.evaluate("__office.headers()") == {"X-Send-Sikkert": "ablehaven"}
    screenshot(page, "taskpane-saved-department")


def test_a_cpr_number_in_the_subject_keeps_the_button_grey(gateway: Daemon, browser: Browser):
    page = browser.page("/addin/taskpane.html", office={
        "to": [contact("sikkermail@ast.dk", "Arbejdstilsynet")],
        "subject": "Vedr. 220910-1234, bolig 127"})
    expect(page.locator("#emne-advarsel")).to_contain_text("CPR-nummer")
    expect(page.get_by_role("button", name="Send Sikkert")).to_be_disabled()
    expect(page.locator("#send-hjaelp")).to_have_text("Fjern CPR-nummeret fra emnet.")
    screenshot(page, "taskpane-cpr-subject")
