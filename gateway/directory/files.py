"""The files backend: recipient certificates in a folder, found by the addresses they name.

Every *.pem, *.crt and *.cer file below `directory.path` (PEM, several certificates
allowed, or DER) is read; each end-entity certificate is indexed under the e-mail
addresses it names (RFC 8550 §3), never under its file name. CA certificates in the same
file travel with it as intermediates for path building (RFC 5280 §6). The folder is
indexed in a thread at the first lookup and again on reload (SIGHUP).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.directory import DirectoryUnavailable
from gateway.directory.validate import address_key, is_ca, named_addresses

log = logging.getLogger(__name__)

SUFFIXES = (".pem", ".crt", ".cer")


def read_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, a DER file or a PKCS#7 bundle (RFC 2315 "certs-only",
    PEM or DER, as a MitID Erhverv export or a .p7b/.p7c holds them); ValueError when none."""
    data = path.read_bytes()
    if b"-----BEGIN PKCS7-----" in data:
        return pkcs7.load_pem_pkcs7_certificates(data)
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        return pkcs7.load_der_pkcs7_certificates(data)


def build_index(root: Path) -> dict[str, tuple[bytes, ...]]:
    """Address -> its certificates (DER), then the CA certificates from the same files."""
    os.listdir(root)  # an unreadable folder is an error, not an empty directory
    leaves: dict[str, dict[bytes, None]] = {}
    cas: dict[str, dict[bytes, None]] = {}
    count = 0
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in SUFFIXES or not path.is_file():
            continue
        try:
            certs = read_certificates(path)
        except (OSError, ValueError) as e:
            log.warning("directory: skipping %s: %s", path, e)
            continue
        file_leaves: list[tuple[bytes, set[str]]] = []
        file_cas: dict[bytes, None] = {}
        for cert in certs:
            der = cert.public_bytes(Encoding.DER)
            try:
                if is_ca(cert):
                    file_cas[der] = None
                else:
                    file_leaves.append((der, named_addresses(cert)))
            except ValueError as e:  # malformed extensions
                log.warning("directory: skipping a certificate in %s: %s", path, e)
        count += len(file_leaves)
        for der, addresses in file_leaves:
            for address in addresses:
                leaves.setdefault(address, {})[der] = None
                cas.setdefault(address, {}).update(file_cas)
    log.info("directory: %d certificates for %d addresses in %s", count, len(leaves), root)
    return {address: tuple(found) + tuple(c for c in cas[address] if c not in found)
            for address, found in leaves.items()}


class FilesSource:
    """Certificates published as files in a folder (backend = "files")."""

    backend = "files"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._index: dict[str, tuple[bytes, ...]] | None = None
        self._lock = asyncio.Lock()

    async def lookup(self, address: str) -> list[bytes]:
        """The certificates naming this address, then CA certificates filed with them."""
        index = self._index
        if index is None:
            async with self._lock:
                index = self._index if self._index is not None else await self._build()
        return list(index.get(address_key(address), ()))

    async def ping(self) -> None:
        """Raise DirectoryUnavailable unless the folder can be listed."""
        try:
            await asyncio.to_thread(os.listdir, self.path)
        except OSError as e:
            raise DirectoryUnavailable(f"{self.path}: {e.strerror}") from None

    async def close(self) -> None:
        """Drop the index."""
        self._index = None

    async def _build(self) -> dict[str, tuple[bytes, ...]]:
        try:
            self._index = await asyncio.to_thread(build_index, self.path)
        except OSError as e:
            raise DirectoryUnavailable(f"{self.path}: {e.strerror}") from None
        return self._index
