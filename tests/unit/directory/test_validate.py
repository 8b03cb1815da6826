"""RecipientValidator: which certificate a recipient gets, and the exact reason when none."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.directory.crl import CrlStore
from gateway.directory.validate import RecipientValidator, address_key, certificate_info
from gateway.model import RecipientClass
from tests.support.pki import CA, NOW, Issued

SMIME, UNSAFE, UNKNOWN = RecipientClass.SMIME, RecipientClass.UNSAFE, RecipientClass.UNKNOWN
ADDRESS = "Ole.Elsen@dhl.dk"




@pytest.fixture
async def make() -> AsyncIterator[Callable[..., RecipientValidator]]:
    """Builds validators and closes them after the test."""
    made: list[RecipientValidator] = []

    def factory(*anchors: CA, **kwargs) -> RecipientValidator:
        made.append(RecipientValidator([a.cert for a in anchors], **kwargs))
        return made[-1]

    yield factory
    for validator in made:
        if validator.crls:
            await validator.crls.close()
        validator.close()


async def crl_store(tmp_path: Path, *crls: bytes, issuers=()) -> CrlStore:
    for i, data in enumerate(crls):
        (tmp_path / f"{i}.crl").write_bytes(data)
    store = CrlStore([str(tmp_path / "*.crl")], list(issuers))
    await store.refresh()
    return store


def der(ca: CA) -> bytes:
    return ca.cert.public_bytes(Encoding.DER)


async def test_valid_certificate_makes_smime(root, make):
    leaf = root.issue(ADDRESS)
    choice = await make(root).choose(ADDRESS, [leaf.der])
    info = certificate_info(leaf.cert)
    assert choice.cls == SMIME
    assert choice.der == leaf.der
    assert choice.certificate == info
    assert choice.reason == f"certificate {info.describe()}"
    assert info.subject == f"CN={ADDRESS}"
    assert int(info.serial, 16) == leaf.cert.serial_number and len(info.serial) % 2 == 0
    assert info.not_after == leaf.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(("issue", "reason"), [
    (dict(not_after=NOW - timedelta(days=2), not_before=NOW - timedelta(days=400)),
     f"expired {NOW - timedelta(days=2):%Y-%m-%d}"),
    (dict(not_before=NOW + timedelta(days=3)),
     f"not valid before {NOW + timedelta(days=3):%Y-%m-%d}"),
    (dict(emails=["someone.else@dhl.dk"]), "does not name this address"),
    (dict(key_encipherment=False), "not for key encipherment"),
    (dict(ec_key=True), "not an RSA key"),
    (dict(server=True), "not for e-mail protection"),
])
async def test_each_flaw_has_its_reason(root, make, issue, reason):
    leaf = root.issue(ADDRESS, **issue)
    choice = await make(root).choose(ADDRESS, [leaf.der])
    assert (choice.cls, choice.reason) == (UNSAFE, reason)
    assert choice.der is None
    assert choice.certificate == certificate_info(leaf.cert)


async def test_untrusted_issuer(root, make):
    stranger = CA("Test Root CA")  # same name, other key: only the signature tells
    choice = await make(root).choose(ADDRESS, [stranger.issue(ADDRESS).der])
    assert (choice.cls, choice.reason) == (UNSAFE, "not trusted")


async def test_no_certificate(root, make):
    validator = make(root)
    assert (await validator.choose(ADDRESS, [])).reason == "no certificate"
    # Unparseable data and CA certificates are not recipient certificates.
    choice = await validator.choose(ADDRESS, [b"\x30\x03\x02\x01\x00", der(root)])
    assert (choice.cls, choice.reason) == (UNSAFE, "no certificate")


async def test_moment_of_validation(root, make):
    leaf = root.issue(ADDRESS)
    later = leaf.cert.not_valid_after_utc + timedelta(days=1)
    choice = await make(root).choose(ADDRESS, [leaf.der], now=later)
    assert choice.reason == f"expired {leaf.cert.not_valid_after_utc:%Y-%m-%d}"


@pytest.mark.parametrize(("named", "asked", "cls"), [
    ("Ole.Elsen@DHL.DK", "Ole.Elsen@dhl.dk", SMIME),  # domain: any case
    ("ole.elsen@dhl.dk", "Ole.Elsen@dhl.dk", UNSAFE),  # local part: exact
])
async def test_address_comparison(root, make, named, asked, cls):
    choice = await make(root).choose(asked, [root.issue(named).der])
    assert choice.cls == cls


async def test_subject_email_address_names_the_recipient(root, make):
    leaf = root.issue(None, common_name="Ole Elsen", subject_email=ADDRESS)
    assert (await make(root).choose(ADDRESS, [leaf.der])).cls == SMIME


def test_address_key():
    assert address_key("Ole@DHL.Dk") == "Ole@dhl.dk"


async def test_intermediate_from_the_entry_or_the_configuration(root, inter, make):
    leaf = inter.issue(ADDRESS)
    assert (await make(root).choose(ADDRESS, [leaf.der, der(inter)])).cls == SMIME
    configured = make(root, intermediates=[inter.cert])
    assert (await configured.choose(ADDRESS, [leaf.der])).cls == SMIME
    missing = await make(root).choose(ADDRESS, [leaf.der])
    assert (missing.cls, missing.reason) == (UNSAFE, "not trusted")


async def test_newest_valid_certificate_wins(root, make):
    older = root.issue(ADDRESS, not_before=NOW - timedelta(days=60))
    newer = root.issue(ADDRESS, not_before=NOW - timedelta(days=5))
    choice = await make(root).choose(ADDRESS, [older.der, newer.der])
    assert choice.der == newer.der


async def test_bad_newer_certificate_does_not_hide_a_good_one(root, make):
    good = root.issue(ADDRESS, not_before=NOW - timedelta(days=60))
    expired_newer = root.issue(ADDRESS, not_before=NOW - timedelta(days=10),
                               not_after=NOW - timedelta(days=1))
    untrusted_newest = CA("Other").issue(ADDRESS, not_before=NOW - timedelta(days=2))
    choice = await make(root).choose(ADDRESS, [expired_newer.der, untrusted_newest.der, good.der])
    assert (choice.cls, choice.der) == (SMIME, good.der)


async def test_all_bad_reports_the_newest_that_names_the_address(root, make):
    expired = root.issue(ADDRESS, not_before=NOW - timedelta(days=400),
                         not_after=NOW - timedelta(days=30))
    no_encipherment = root.issue(ADDRESS, not_before=NOW - timedelta(days=20),
                                 key_encipherment=False)
    other_address = root.issue("x@dhl.dk", not_before=NOW - timedelta(days=1))
    choice = await make(root).choose(ADDRESS, [expired.der, no_encipherment.der,
                                               other_address.der])
    assert (choice.cls, choice.reason) == (UNSAFE, "not for key encipherment")
    assert choice.certificate == certificate_info(no_encipherment.cert)


async def test_revoked_per_crl_file(tmp_path, make):
    ca = CA("Revoking CA")
    good, bad = ca.issue(ADDRESS), ca.issue(ADDRESS)
    when = NOW - timedelta(days=3)
    ca.revoke(bad, when)
    store = await crl_store(tmp_path, ca.crl(), issuers=[ca.cert])
    validator = make(ca, crls=store)
    choice = await validator.choose(ADDRESS, [bad.der])
    assert (choice.cls, choice.reason) == (UNSAFE, f"revoked {when:%Y-%m-%d}")
    assert (await validator.choose(ADDRESS, [good.der, bad.der])).der == good.der


async def test_revoked_intermediate(tmp_path, make):
    top = CA("Revoking Root")
    middle = CA("Revoked Issuing CA", parent=top)
    leaf = middle.issue(ADDRESS)
    top.revoke(Issued(middle.cert, middle.key), NOW - timedelta(days=1))
    store = await crl_store(tmp_path, top.crl(), middle.crl())
    choice = await make(top, crls=store).choose(ADDRESS, [leaf.der, der(middle)])
    assert (choice.cls, choice.reason) == (UNSAFE, f"revoked {NOW - timedelta(days=1):%Y-%m-%d}")


@pytest.mark.parametrize(("mode", "cls"), [("soft-fail", SMIME), ("hard-fail", UNKNOWN)])
async def test_stale_crl(tmp_path, make, mode, cls):
    ca = CA("Stale CA")
    leaf = ca.issue(ADDRESS)
    stale = ca.crl(last_update=NOW - timedelta(days=8), next_update=NOW - timedelta(days=1))
    store = await crl_store(tmp_path, stale)
    choice = await make(ca, crls=store, revocation=mode).choose(ADDRESS, [leaf.der])
    assert choice.cls == cls
    if cls == UNKNOWN:
        assert choice.reason == "revocation status unavailable"


@pytest.mark.parametrize(("mode", "cls"), [("soft-fail", SMIME), ("hard-fail", UNKNOWN)])
async def test_missing_crl(tmp_path, make, mode, cls):
    ca = CA("CA without CRL")
    store = CrlStore([str(tmp_path / "absent.crl")])
    await store.refresh()
    choice = await make(ca, crls=store, revocation=mode).choose(ADDRESS, [ca.issue(ADDRESS).der])
    assert choice.cls == cls


async def test_hard_fail_without_any_crl_is_unknown(root, make):
    choice = await make(root, revocation="hard-fail").choose(ADDRESS, [root.issue(ADDRESS).der])
    assert (choice.cls, choice.reason) == (UNKNOWN, "revocation status unavailable")


async def test_unknown_outranks_unsafe(tmp_path, make):
    revoking, silent = CA("Fresh CRL CA"), CA("Stale CRL CA")
    revoked = revoking.issue(ADDRESS, not_before=NOW - timedelta(days=1))
    revoking.revoke(revoked)
    unsure = silent.issue(ADDRESS, not_before=NOW - timedelta(days=9))
    stale = silent.crl(last_update=NOW - timedelta(days=8), next_update=NOW - timedelta(days=1))
    store = await crl_store(tmp_path, revoking.crl(), stale)
    validator = make(revoking, silent, crls=store, revocation="hard-fail")
    choice = await validator.choose(ADDRESS, [revoked.der, unsure.der])
    assert choice.cls == UNKNOWN


async def test_forged_crl_is_not_believed(tmp_path, make):
    ca = CA("Genuine CA")
    leaf = ca.issue(ADDRESS)
    forger = CA("Genuine CA")
    forger.revoke(leaf)
    store = await crl_store(tmp_path, forger.crl())  # no issuers: the store cannot tell
    assert store.current()
    assert (await make(ca, crls=store).choose(ADDRESS, [leaf.der])).cls == SMIME
    hard = make(ca, crls=store, revocation="hard-fail")
    assert (await hard.choose(ADDRESS, [leaf.der])).cls == UNKNOWN


def test_configuration_errors(root):
    with pytest.raises(ValueError, match="trust anchor"):
        RecipientValidator([])
    with pytest.raises(ValueError, match="revocation"):
        RecipientValidator([root.cert], revocation="maybe")


async def test_a_kept_choice_gives_way_to_a_new_crl(tmp_path, make):
    """The certificate chosen a moment ago is not chosen again once a CRL revokes it."""
    ca = CA("Later Revoking CA")
    leaf = ca.issue(ADDRESS)
    store = await crl_store(tmp_path, ca.crl(), issuers=[ca.cert])
    validator = make(ca, crls=store)
    assert (await validator.choose(ADDRESS, [leaf.der])).cls == SMIME
    assert (await validator.choose(ADDRESS, [leaf.der])).cls == SMIME  # kept
    when = NOW - timedelta(hours=1)
    ca.revoke(leaf, when)
    (tmp_path / "0.crl").write_bytes(ca.crl())
    await store.refresh(force=True)
    choice = await validator.choose(ADDRESS, [leaf.der])
    assert (choice.cls, choice.reason) == (UNSAFE, f"revoked {when:%Y-%m-%d}")


async def test_a_kept_choice_ends_when_its_certificate_does(root, make):
    leaf = root.issue(ADDRESS)
    validator = make(root)
    assert (await validator.choose(ADDRESS, [leaf.der])).cls == SMIME
    later = leaf.cert.not_valid_after_utc + timedelta(days=1)
    choice = await validator.choose(ADDRESS, [leaf.der], now=later)
    assert choice.reason == f"expired {leaf.cert.not_valid_after_utc:%Y-%m-%d}"
