"""ChoiceCache: a kept choice is used only for its moment, its certificates and its CRLs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.directory.choices import ChoiceCache

T0 = datetime(2026, 1, 1, 12, tzinfo=UTC)
FAR = T0 + timedelta(days=365)
CRLS = [object()]


def test_kept_until_the_ttl() -> None:
    cache: ChoiceCache[str] = ChoiceCache(ttl=60)
    cache.put("a@x.dk", [b"c"], "choice", T0, CRLS, FAR)
    assert cache.get("a@x.dk", [b"c"], T0 + timedelta(seconds=59), CRLS) == "choice"
    assert cache.get("a@x.dk", [b"c"], T0 + timedelta(seconds=60), CRLS) is None
    assert cache.get("a@x.dk", [b"c"], T0, CRLS) is None  # dropped once out of date


def test_kept_until_a_certificate_or_crl_ends() -> None:
    cache: ChoiceCache[str] = ChoiceCache(ttl=600)
    cache.put("a@x.dk", [b"c"], "choice", T0, CRLS, T0 + timedelta(seconds=5))
    assert cache.get("a@x.dk", [b"c"], T0 + timedelta(seconds=4), CRLS) == "choice"
    assert cache.get("a@x.dk", [b"c"], T0 + timedelta(seconds=5), CRLS) is None
    cache.put("b@x.dk", [b"c"], "ended", T0, CRLS, T0)
    assert cache.get("b@x.dk", [b"c"], T0, CRLS) is None


def test_an_earlier_moment_is_judged_afresh_and_the_choice_stays() -> None:
    cache: ChoiceCache[str] = ChoiceCache()
    cache.put("a@x.dk", [b"c"], "choice", T0, CRLS, FAR)
    assert cache.get("a@x.dk", [b"c"], T0 - timedelta(seconds=1), CRLS) is None
    assert cache.get("a@x.dk", [b"c"], T0, CRLS) == "choice"


def test_other_certificates_or_other_crls_are_not_the_same_question() -> None:
    cache: ChoiceCache[str] = ChoiceCache()
    cache.put("a@x.dk", [b"c"], "choice", T0, CRLS, FAR)
    assert cache.get("a@x.dk", [b"c", b"d"], T0, CRLS) is None
    assert cache.get("b@x.dk", [b"c"], T0, CRLS) is None
    # An equal-looking but refreshed CRL list (other objects) is another question.
    assert cache.get("a@x.dk", [b"c"], T0, [object()]) is None
    assert cache.get("a@x.dk", [b"c"], T0, []) is None


def test_bounded_least_recently_used_first() -> None:
    cache: ChoiceCache[str] = ChoiceCache(max_size=2)
    for address in ("a", "b"):
        cache.put(address, [], address, T0, CRLS, FAR)
    assert cache.get("a", [], T0, CRLS) == "a"
    cache.put("c", [], "c", T0, CRLS, FAR)
    assert cache.get("b", [], T0, CRLS) is None
    assert cache.get("a", [], T0, CRLS) == "a"
    assert cache.get("c", [], T0, CRLS) == "c"
