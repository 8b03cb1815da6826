"""FilesSource: a folder of certificate files, indexed by the addresses the certificates name."""

from __future__ import annotations

import shutil

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.directory import DirectoryUnavailable
from gateway.directory.files import FilesSource
from gateway.directory.validate import RecipientValidator
from gateway.model import RecipientClass

ADDRESS = "Ole.Elsen@dhl.dk"






async def test_indexed_by_the_addresses_named_not_the_file_name(tmp_path, root):
    leaf = root.issue(None, common_name="Ole", emails=[ADDRESS, "ole@dhl.dk"])
    leaf.write(tmp_path / "whatever-name.pem")
    by_subject = root.issue(None, common_name="Borger", subject_email="borger@example.dk")
    by_subject.write(tmp_path / "olelsen@dhl.dk.pem")
    source = FilesSource(tmp_path)
    assert await source.lookup(ADDRESS) == [leaf.der]
    assert await source.lookup("ole@dhl.dk") == [leaf.der]
    assert await source.lookup("borger@example.dk") == [by_subject.der]
    assert await source.lookup("olelsen@dhl.dk") == []


async def test_domain_in_any_case_local_part_exact(tmp_path, root):
    leaf = root.issue("Ole.Elsen@DHL.DK")
    leaf.write(tmp_path / "ole.pem")
    source = FilesSource(tmp_path)
    assert await source.lookup("Ole.Elsen@dhl.dk") == [leaf.der]
    assert await source.lookup("ole.elsen@dhl.dk") == []


async def test_chain_in_the_same_file_comes_along(tmp_path, root, inter):
    leaf = inter.issue(ADDRESS)
    leaf.write(tmp_path / "ole.pem")  # leaf, then the issuing CA
    source = FilesSource(tmp_path)
    found = await source.lookup(ADDRESS)
    assert found == [leaf.der, inter.cert.public_bytes(Encoding.DER)]
    validator = RecipientValidator([root.cert])
    try:
        assert (await validator.choose(ADDRESS, found)).cls == RecipientClass.SMIME
    finally:
        validator.close()


async def test_der_files_and_subfolders(tmp_path, root):
    crt, cer = root.issue(ADDRESS), root.issue(ADDRESS)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.CRT").write_bytes(crt.der)
    (tmp_path / "a" / "b" / "two.cer").write_bytes(cer.pem)
    assert sorted(await FilesSource(tmp_path).lookup(ADDRESS)) == sorted([crt.der, cer.der])


async def test_bad_and_unrelated_files_are_skipped(tmp_path, root, caplog):
    leaf = root.issue(ADDRESS)
    leaf.write(tmp_path / "ole.pem", tmp_path / "ole.key", with_chain=False)
    (tmp_path / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    (tmp_path / "junk.cer").write_bytes(b"\x00\x01")
    (tmp_path / "notes.txt").write_bytes(leaf.pem)
    (tmp_path / "folder.pem").mkdir()
    assert await FilesSource(tmp_path).lookup(ADDRESS) == [leaf.der]
    assert "broken.pem" in caplog.text and "junk.cer" in caplog.text


async def test_reload_sees_new_and_removed_files(tmp_path, root):
    first, second = root.issue(ADDRESS), root.issue(ADDRESS)
    first.write(tmp_path / "first.pem")
    source = FilesSource(tmp_path)
    assert await source.lookup(ADDRESS) == [first.der]
    second.write(tmp_path / "second.pem")
    assert await source.lookup(ADDRESS) == [first.der]  # until SIGHUP
    (tmp_path / "first.pem").unlink()
    assert await FilesSource(tmp_path).lookup(ADDRESS) == [second.der]  # SIGHUP: a new index


async def test_unreadable_folder(tmp_path, root):
    folder = tmp_path / "certs"
    source = FilesSource(folder)
    with pytest.raises(DirectoryUnavailable):
        await source.ping()
    with pytest.raises(DirectoryUnavailable):
        await source.lookup(ADDRESS)
    folder.mkdir()
    root.issue(ADDRESS).write(folder / "ole.pem")
    await source.ping()
    assert len(await source.lookup(ADDRESS)) == 1
    shutil.rmtree(folder)
    assert len(await source.lookup(ADDRESS)) == 1  # the index stays until SIGHUP
