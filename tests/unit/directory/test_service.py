"""CertificateDirectory and open_directory: address in, Decision out, fail closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.config import ConfigError, DirectoryConfig
from gateway.directory import DirectoryUnavailable
from gateway.directory.files import FilesSource
from gateway.directory.service import CertificateDirectory, open_directory
from gateway.directory.validate import RecipientValidator, certificate_info
from gateway.model import RecipientClass
from tests.support.pki import CA, NOW

ADDRESS = "olelsen@dhl.dk"


class SlowSource(FilesSource):
    """A files source that takes its time to answer."""

    backend = "slow"

    async def lookup(self, address: str) -> list[bytes]:
        await asyncio.sleep(10)
        return []


class DownSource(FilesSource):
    """A files source whose server is down."""

    backend = "down"

    async def lookup(self, address: str) -> list[bytes]:
        raise DirectoryUnavailable("connection refused")


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("Service Test CA")


@pytest.fixture
def layout(tmp_path: Path, ca: CA) -> tuple[Path, Path]:
    """A directory folder and a trust folder holding the CA."""
    folder, trust = tmp_path / "directory", tmp_path / "trust"
    folder.mkdir()
    trust.mkdir()
    (trust / "ca.pem").write_bytes(ca.pem)
    return folder, trust


@pytest.fixture
async def opened() -> AsyncIterator[list[CertificateDirectory]]:
    """Directories put here are closed after the test."""
    made: list[CertificateDirectory] = []
    yield made
    for directory in made:
        await directory.close()


def sample(name: str, backend: str) -> float:
    return REGISTRY.get_sample_value(name, {"backend": backend}) or 0.0


def files_config(folder: Path, trust: Path, **kwargs) -> DirectoryConfig:
    return DirectoryConfig(backend="files", path=folder,
                           trust_anchors=(str(trust / "*.pem"),), **kwargs)


async def test_smime_decision(layout, ca, opened):
    folder, trust = layout
    leaf = ca.issue(ADDRESS)
    leaf.write(folder / "ole.pem")
    directory = open_directory(files_config(folder, trust), "gateway.toml")
    opened.append(directory)
    before = sample("sendsikkert_directory_lookup_seconds_count", "files")
    decision = await directory.classify(ADDRESS)
    info = certificate_info(leaf.cert)
    assert decision.cls == RecipientClass.SMIME
    assert decision.reason == (f"certificate CN={ADDRESS}, serial {info.serial}, "
                               f"expires {leaf.cert.not_valid_after_utc:%Y-%m-%d}")
    assert decision.certificate == info
    assert decision.certificate_der == leaf.der
    assert sample("sendsikkert_directory_lookup_seconds_count", "files") == before + 1


async def test_unsafe_decisions(layout, ca, opened):
    folder, trust = layout
    expired = ca.issue(ADDRESS, not_before=NOW - timedelta(days=90),
                       not_after=NOW - timedelta(days=1))
    expired.write(folder / "ole.pem")
    directory = open_directory(files_config(folder, trust), "gateway.toml")
    opened.append(directory)
    decision = await directory.classify(ADDRESS)
    assert (decision.cls, decision.reason) == (
        RecipientClass.UNSAFE, f"expired {expired.cert.not_valid_after_utc:%Y-%m-%d}")
    assert decision.certificate_der is None
    nobody = await directory.classify("nobody@dhl.dk")
    assert (nobody.cls, nobody.reason) == (RecipientClass.UNSAFE, "no certificate")


async def test_source_down_is_unknown(tmp_path, ca):
    directory = CertificateDirectory(DownSource(tmp_path), RecipientValidator([ca.cert]), "down")
    before = sample("sendsikkert_directory_errors_total", "down")
    decision = await directory.classify(ADDRESS)
    await directory.close()
    assert (decision.cls, decision.reason) == (
        RecipientClass.UNKNOWN, "certificate directory unavailable: connection refused")
    assert sample("sendsikkert_directory_errors_total", "down") == before + 1


async def test_slow_source_is_unknown(tmp_path, ca):
    directory = CertificateDirectory(SlowSource(tmp_path), RecipientValidator([ca.cert]), "slow",
                                     timeout=0.05)
    decision = await directory.classify(ADDRESS)
    await directory.close()
    assert (decision.cls, decision.reason) == (
        RecipientClass.UNKNOWN, "certificate directory unavailable: no answer within 0.05 s")
    assert sample("sendsikkert_directory_errors_total", "slow") >= 1


async def test_missing_folder_is_unknown_and_not_ready(layout, ca, opened):
    folder, trust = layout
    directory = open_directory(files_config(folder, trust), "gateway.toml")
    opened.append(directory)
    await directory.ping()
    folder.rmdir()
    with pytest.raises(DirectoryUnavailable):
        await directory.ping()
    assert (await directory.classify(ADDRESS)).cls == RecipientClass.UNKNOWN


async def test_a_new_directory_reads_files_and_crls_again(layout, ca, opened):
    """SIGHUP opens the directory anew: new certificates and new CRLs count at once."""
    folder, trust = layout
    leaf = ca.issue(ADDRESS)
    crl = folder.parent / "ca.crl"
    crl.write_bytes(ca.crl())
    config = files_config(folder, trust, crls=(str(crl),))

    async def reopened():
        directory = open_directory(config, "gateway.toml")
        opened.append(directory)
        await directory.start()
        return directory

    first = await reopened()
    assert (await first.classify(ADDRESS)).reason == "no certificate"
    leaf.write(folder / "ole.pem")
    assert (await first.classify(ADDRESS)).reason == "no certificate"  # until SIGHUP
    assert (await (await reopened()).classify(ADDRESS)).cls == RecipientClass.SMIME
    ca.revoke(leaf)
    crl.write_bytes(ca.crl())
    assert (await (await reopened()).classify(ADDRESS)).reason.startswith("revoked ")


async def test_crls_loaded_before_the_first_answer(layout, ca, opened):
    folder, trust = layout
    leaf = ca.issue(ADDRESS)
    leaf.write(folder / "ole.pem")
    ca.revoke(leaf)
    crl = folder.parent / "ca.crl"
    crl.write_bytes(ca.crl())
    directory = open_directory(files_config(folder, trust, crls=(str(crl),)), "gateway.toml")
    opened.append(directory)
    # No start(): `send-sikkert check` classifies without the background task.
    assert (await directory.classify(ADDRESS)).reason.startswith("revoked ")


async def test_start_runs_the_crl_refresher_until_close(layout, ca):
    folder, trust = layout
    (folder.parent / "ca.crl").write_bytes(ca.crl())
    directory = open_directory(
        files_config(folder, trust, crls=(str(folder.parent / "*.crl"),)), "gateway.toml")
    await directory.start()
    assert directory.validator.crls.current()
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "crl-refresh"]
    assert len(tasks) == 1 and not tasks[0].done()
    await directory.close()
    assert tasks[0].done()


def test_no_backend_no_directory():
    assert open_directory(DirectoryConfig(backend=None)) is None


@pytest.mark.parametrize(("change", "key", "message"), [
    ({"trust_anchors": ("{tmp}/trust/none-*.pem",)}, "directory.trust_anchors", "matches no file"),
    ({"trust_anchors": ("{tmp}/bad.pem",)}, "directory.trust_anchors", "no certificate"),
    ({"intermediates": ("{tmp}/missing.pem",)}, "directory.intermediates", "matches no file"),
    ({"path": "{tmp}/nowhere"}, "directory.path", "not a folder"),
])
def test_configuration_errors(layout, tmp_path, change, key, message):
    folder, trust = layout
    (tmp_path / "bad.pem").write_text("not a certificate")
    values = {name: (tuple(v.format(tmp=tmp_path) for v in value) if isinstance(value, tuple)
                     else Path(value.format(tmp=tmp_path)))
              for name, value in change.items()}
    config = files_config(folder, trust).model_copy(update=values)
    with pytest.raises(ConfigError) as error:
        open_directory(config, "gateway.toml")
    assert (error.value.file, error.value.key) == ("gateway.toml", key)
    assert message in error.value.message


async def test_intermediates_glob_may_match_nothing(layout, opened):
    folder, trust = layout
    config = files_config(folder, trust, intermediates=(str(trust / "extra-*.pem"),))
    directory = open_directory(config, "gateway.toml")
    opened.append(directory)
    assert directory is not None
