"""Learnt certificates: validated before they are stored, stored as files, consulted beside
the backend and validated again at every lookup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import REGISTRY

from gateway.directory import DirectoryUnavailable
from gateway.directory.files import FilesSource
from gateway.directory.learnt import IMPORT, FileStore, Learner
from gateway.directory.service import CertificateDirectory
from gateway.directory.validate import RecipientValidator
from gateway.model import RecipientClass
from tests.support.pki import CA, NOW

ADDRESS = "ole@partner.dk"


@pytest.fixture
async def validator(root: CA) -> AsyncIterator[RecipientValidator]:
    made = RecipientValidator([root.cert])
    yield made
    made.close()


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "learnt")


def learnt_count() -> float:
    return REGISTRY.get_sample_value("sendsikkert_certificates_learnt_total",
                                     {"source": IMPORT}) or 0.0


def files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pem")) if folder.exists() else []


async def test_a_valid_certificate_is_stored_for_every_address_it_names(store, validator,
                                                                         inter):
    leaf = inter.issue(emails=[ADDRESS, "Ole.P@Partner.DK"])
    before = learnt_count()
    chain = [inter.cert.public_bytes(Encoding.DER)]
    learnt = await Learner(store, validator).learn(leaf.der, chain, IMPORT,
                                                   "certs import ole.pem")
    assert learnt.ok and learnt.added == ("Ole.P@partner.dk", ADDRESS)
    assert learnt_count() == before + 1  # one certificate, however many addresses
    [path] = files(store.folder(ADDRESS))
    text = path.read_text()
    assert "# learnt: " in text and "from certs import ole.pem" in text
    assert x509.load_pem_x509_certificates(text.encode()) == [leaf.cert, inter.cert]
    assert await store.lookup(ADDRESS) == [leaf.der, inter.cert.public_bytes(Encoding.DER)]
    assert await store.lookup("Ole.P@partner.dk") == await store.lookup(ADDRESS)
    again = await Learner(store, validator).learn(leaf.der, chain, IMPORT, "again")
    assert again.ok and again.added == () and again.known == ("Ole.P@partner.dk", ADDRESS)
    assert learnt_count() == before + 1
    assert [p.name for p in store.folder(ADDRESS).iterdir()] == [path.name]  # no leftovers


@pytest.mark.parametrize(("flaw", "reason"), [
    ({"not_before": NOW - timedelta(days=400), "not_after": NOW - timedelta(days=3)},
     "expired"),
    ({"key_encipherment": False}, "not for key encipherment"),
    ({"ec_key": True}, "not an RSA key"),
])
async def test_a_certificate_that_would_not_make_smime_is_refused(store, validator, root,
                                                                 flaw, reason):
    learnt = await Learner(store, validator).learn(root.issue(ADDRESS, **flaw).der, [],
                                                   IMPORT, "x")
    assert not learnt.ok and f"{ADDRESS}: {reason}" in learnt.refused
    assert files(store.folder(ADDRESS)) == []


async def test_untrusted_ca_and_no_address_are_refused(store, validator, root):
    learner = Learner(store, validator)
    untrusted = await learner.learn(CA("Elsewhere").issue(ADDRESS).der, [], IMPORT, "x")
    assert untrusted.refused == f"{ADDRESS}: not trusted"
    nameless = await learner.learn(root.issue(common_name="server").der, [], IMPORT, "x")
    assert nameless.refused == "names no e-mail address"
    ca = await learner.learn(root.cert.public_bytes(Encoding.DER), [], IMPORT, "x")
    assert "a CA certificate" in ca.refused
    assert not store.root.exists()


def test_addresses_become_folder_names_that_stay_inside_the_store(store):
    assert store.folder("ole@Partner.DK").name == "ole@partner.dk"
    assert store.folder("a/b@x.dk").name == "a%2Fb@x.dk"
    assert store.folder(".x@x.dk").name == "%2Ex@x.dk"
    with pytest.raises(DirectoryUnavailable):
        store.folder("..")


async def test_the_directory_consults_the_store_and_the_newest_valid_wins(tmp_path, store,
                                                                         validator, root):
    published = tmp_path / "published"
    published.mkdir()
    old = root.issue(ADDRESS, not_before=NOW - timedelta(days=100))
    old.write(published / "old.pem")
    directory = CertificateDirectory(FilesSource(published), validator, "files", learnt=store)
    first = await directory.classify(ADDRESS)
    assert first.certificate_der == old.der and "(learnt)" not in first.reason
    newer = root.issue(ADDRESS, not_before=NOW - timedelta(days=1))
    await store.add(ADDRESS, newer.der, [], "test")
    chosen = await directory.classify(ADDRESS)
    assert chosen.cls == RecipientClass.SMIME and chosen.certificate_der == newer.der
    assert chosen.reason.endswith("(learnt)")
    # Validated at every lookup: a newer learnt one that is expired does not count.
    expired = root.issue(ADDRESS, not_before=NOW - timedelta(hours=1),
                         not_after=NOW + timedelta(minutes=1))
    await store.add(ADDRESS, expired.der, [], "test")
    later = await directory.validator.choose(ADDRESS, await store.lookup(ADDRESS),
                                             now=NOW + timedelta(minutes=10))
    assert later.der == newer.der


async def test_a_store_that_cannot_be_read_makes_the_class_unknown(tmp_path, validator):
    (tmp_path / "learnt").write_text("a file where the folder should be")
    published = tmp_path / "published"
    published.mkdir()
    broken = FileStore(tmp_path / "learnt")
    directory = CertificateDirectory(FilesSource(published), validator, "files", learnt=broken)
    decision = await directory.classify(ADDRESS)
    assert decision.cls == RecipientClass.UNKNOWN and "learnt certificates" in decision.reason
    with pytest.raises(DirectoryUnavailable):
        await directory.ping()
