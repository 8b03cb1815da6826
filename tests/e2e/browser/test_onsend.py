"""The send-time check (Smart Alerts OnMessageSend) in a real Chromium: its three answers,
and a gateway that cannot be reached or does not answer."""

from __future__ import annotations

import signal

import pytest
from playwright.sync_api import Page

from tests.e2e.browser.conftest import Browser, csp_violations, screenshot, seed_four_colours
from tests.support.daemon import Daemon, GatewayConfig

MARKED = {"X-Send-Sikkert": "aeldreomsorg"}
BODY_WITH_CPR = "Hej Ole\n\nVedr. Karen Jensen, CPR-nr. 220910-1234, bolig 127.\n"
ANSWER_WITHIN_MS = 2000  # "within a second or two"


@pytest.fixture
def seeded(config: GatewayConfig) -> dict[str, str]:
    return seed_four_colours(config)


def send(browser: Browser, office: dict) -> tuple[Page, dict, float]:
    page = browser.page("/addin/commands.html", office=office)
    page.wait_for_function("window.Office && Office.context && window.SendSikkertOnSend")
    answer = page.evaluate("__office.send('onMessageSendHandler')")
    return page, answer["options"], answer["ms"]


def to(*addresses: str) -> list[dict[str, str]]:
    return [{"emailAddress": a, "displayName": a} for a in addresses]


def test_a_marked_mail_with_an_unsafe_recipient_is_blocked_naming_it(
        seeded: dict[str, str], gateway: Daemon, browser: Browser):
    page, options, ms = send(browser, {"to": to(seeded["turkis"], seeded["grøn"]),
                                       "bcc": to(seeded["rød"], seeded["grå"]),
                                       "headers": MARKED, "body": BODY_WITH_CPR})
    assert options["allowEvent"] is False
    message = options["errorMessage"]
    assert f"{seeded['rød']} (Sikker mail er ikke mulig)" in message
    assert f"{seeded['grå']} (Kan ikke afgøres lige nu)" in message
    assert seeded["turkis"] not in message and seeded["grøn"] not in message
    assert "sendModeOverride" not in options  # a block, no "send anyway"
    assert (options["commandId"], options["cancelLabel"]) == ("msgComposeOpenPaneButton",
                                                              "Åbn Send Sikkert")
    print(f"blocked in {ms:.0f} ms")
    assert len(message) <= 500 and ms < ANSWER_WITHIN_MS
    assert csp_violations(page) == []
    screenshot(page, "onsend-blocked")


def test_a_marked_mail_to_safe_recipients_goes(seeded: dict[str, str], gateway: Daemon,
                                              browser: Browser):
    page, options, ms = send(browser, {"to": to(seeded["turkis"]),
                                       "cc": to(seeded["grøn"], "sikkermail@ast.dk"),
                                       "subject": "aeldreomsorg%% Vedr. din mor",
                                       "body": BODY_WITH_CPR})
    assert options == {"allowEvent": True}  # marked by the subject keyword, CPR in the body
    assert ms < ANSWER_WITHIN_MS
    screenshot(page, "onsend-marked-safe")


def test_an_unmarked_mail_with_a_cpr_number_gets_a_warning_offering_send_sikkert(
        gateway: Daemon, browser: Browser):
    page, options, _ = send(browser, {"to": to("hm@hotmail.dk"), "subject": "Vedr. din mor",
                                      "body": BODY_WITH_CPR})
    assert options["allowEvent"] is False
    assert options["sendModeOverride"] == "promptUser"  # a warning: "Send alligevel" stays
    assert options["commandId"] == "msgComposeOpenPaneButton"
    assert "CPR-nummer (i teksten)" in options["errorMessage"]
    assert "Brug Send Sikkert" in options["errorMessage"]
    assert "220910" not in options["errorMessage"]
    screenshot(page, "onsend-cpr-warning")


def test_an_unmarked_mail_without_personal_data_goes(gateway: Daemon, browser: Browser):
    page, options, _ = send(browser, {"to": to("hm@hotmail.dk"), "subject": "Frokost",
                                      "body": "Ordrenummer 2209101234 er leveret.",
                                      "headers": {"X-Send-Sikkert": "no"}})
    assert options == {"allowEvent": True}
    screenshot(page, "onsend-plain")


def test_a_cpr_number_in_the_subject_of_a_marked_mail_is_blocked(gateway: Daemon,
                                                                 browser: Browser):
    page, options, _ = send(browser, {"to": to("sikkermail@ast.dk"), "headers": MARKED,
                                      "subject": "Vedr. 220910-1234"})
    assert options["allowEvent"] is False and "emnet" in options["errorMessage"]
    screenshot(page, "onsend-cpr-subject")


@pytest.mark.parametrize("how", ["stopped", "frozen"])
def test_an_unreachable_gateway_lets_a_marked_mail_go_and_says_so(
        how: str, gateway: Daemon, browser: Browser):
    page = browser.page("/addin/commands.html", office={"to": to("hm@hotmail.dk"),
                                                        "headers": MARKED})
    page.wait_for_function("window.SendSikkertOnSend !== undefined")
    if how == "stopped":
        gateway.stop()  # connection refused
    else:
        gateway.signal(signal.SIGSTOP)  # connections are accepted, nothing answers
    try:
        answer = page.evaluate("__office.send('onMessageSendHandler')")
    finally:
        if how == "frozen":
            gateway.signal(signal.SIGCONT)
    options = answer["options"]
    assert options["allowEvent"] is False
    assert options["sendModeOverride"] == "promptUser"  # "Send alligevel" sends it
    assert "kunne ikke tjekke modtagerne" in options["errorMessage"]
    print(f"gateway {how}: answered in {answer['ms']:.0f} ms")
    assert answer["ms"] < ANSWER_WITHIN_MS
    screenshot(page, f"onsend-unreachable-{how}")


def test_before_mailbox_1_14_an_unreachable_gateway_lets_the_mail_go(gateway: Daemon,
                                                                      browser: Browser):
    page = browser.page("/addin/commands.html", office={"to": to("hm@hotmail.dk"),
                                                        "headers": MARKED, "mailbox": "1.12"})
    page.wait_for_function("window.SendSikkertOnSend !== undefined")
    gateway.stop()
    options = page.evaluate("__office.send('onMessageSendHandler')")["options"]
    assert options == {"allowEvent": True}
    screenshot(page, "onsend-unreachable-1.12")
