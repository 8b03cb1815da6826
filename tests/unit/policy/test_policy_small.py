"""SEPO list, routing and addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, RoutesConfig
from gateway.policy.address import InvalidAddress, NeedsUtf8, normalise
from gateway.policy.routing import Routing
from gateway.policy.sepo import load_sepo
from tests.support.addresses import GARBAGE


def test_sepo_exact_and_subdomains(tmp_path: Path):
    path = tmp_path / "sepo.txt"
    path.write_text("# members\nast.dk\n.kommune.example.dk  # all subdomains\n\n")
    sepo = load_sepo(path, tmp_path / "gw.toml")
    assert "ast.dk" in sepo and "AST.dk" in sepo
    assert "mail.ast.dk" not in sepo
    assert "x.kommune.example.dk" in sepo and "a.b.kommune.example.dk" in sepo
    assert "kommune.example.dk" not in sepo
    assert len(sepo) == 2


def test_sepo_bad_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / "sepo.txt"
    path.write_text("ast.dk\nnot a domain\n")
    with pytest.raises(ConfigError, match=r"sepo\.list: .*line 2"):
        load_sepo(path, tmp_path / "gw.toml")


def test_sepo_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="sepo.list"):
        load_sepo(tmp_path / "nope.txt", tmp_path / "gw.toml")


def test_routing_order():
    routing = Routing(RoutesConfig(internal="smtp://127.0.0.1:2600", default="mx",
                                   transport={"ast.dk": "smtp://127.0.0.1:2601",
                                              ".region.dk": "file:/tmp/x"}), ("brondby.dk",))
    assert routing.route_for("brondby.dk") == "smtp://127.0.0.1:2600"
    assert routing.route_for("AST.DK") == "smtp://127.0.0.1:2601"
    assert routing.route_for("mail.region.dk") == "file:/tmp/x"
    assert routing.route_for("region.dk") == "mx"
    assert routing.route_for("hotmail.dk") == "mx"


@pytest.mark.parametrize("raw,expected", [
    ("Ole@DHL.dk", "Ole@dhl.dk"), ("<a.b@x.example.dk>", "a.b@x.example.dk"),
    (" a*@x.dk ", "a*@x.dk"), ("user+tag@x.dk", "user+tag@x.dk"), ("o'brien@x.dk", "o'brien@x.dk"),
    ("a" * 64 + "@x.dk", "a" * 64 + "@x.dk")])
def test_normalise(raw, expected):
    assert normalise(raw) == expected


@pytest.mark.parametrize("raw", GARBAGE)
def test_invalid_addresses(raw):
    with pytest.raises(InvalidAddress):
        normalise(raw)



@pytest.mark.parametrize("raw", [
    "hm%hotmail.dk@brondby.dk", "hotmail.dk!hm@brondby.dk", "a%b%c@x.dk", "!@x.dk",
    '"hm@hotmail.dk"@brondby.dk', '"x>"@brondby.dk', "a" * 490 + "@brondby.dk",
])
def test_routing_tricks_are_not_addresses(raw):
    """No percent hack, no bang path, no quoted @ (CONTRACT: 553 5.1.3 at RCPT)."""
    with pytest.raises(InvalidAddress):
        normalise(raw)


@pytest.mark.parametrize("raw,expected", [
    ("søren@brøndby.dk", "søren@brøndby.dk"), ("Søren@BRØNDBY.dk", "Søren@brøndby.dk"),
    ("用户@例子.广告", "用户@例子.广告"), ("anna@brøndby.dk", "anna@brøndby.dk"),
])
def test_utf8_mailboxes(raw, expected):
    assert normalise(raw) == expected
    with pytest.raises(NeedsUtf8):
        normalise(raw, utf8=False)
    assert normalise("anna@xn--brndby-cya.dk", utf8=False) == "anna@xn--brndby-cya.dk"


@pytest.mark.parametrize("raw", [
    "a\u202eb@x.dk", "a\u200d@x.dk", "so\u0308ren@x.dk", "a\u3000b@x.dk", "a\udce6@x.dk",
    "a@br\u00f8ndby-.dk", "a@\u00f8" + "x" * 63 + ".dk", "ø" * 33 + "@x.dk",
])
def test_utf8_garbage(raw):
    """Bidi overrides, joiners, unnormalised or undecodable text, bad IDNA."""
    with pytest.raises(InvalidAddress):
        normalise(raw)


def test_utf8_domains_match_ascii_lists():
    routing = Routing(RoutesConfig(internal="smtp://127.0.0.1:2600", default="mx",
                                   transport={"xn--brndby-cya.dk": "smtp://127.0.0.1:2601"}),
                      ("xn--bllerup-q1a.dk",))
    assert routing.route_for("brøndby.dk") == "smtp://127.0.0.1:2601"
    assert routing.route_for("bøllerup.dk") == "smtp://127.0.0.1:2600"
