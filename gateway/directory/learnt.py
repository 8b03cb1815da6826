"""Certificates learnt from signed inbound mail and `certs import`: one more certificate source.

The directory consults this store beside its backend (CONTRACT "Inbound"), so a partner
who was never in any directory becomes `smime` once the gateway has seen a valid
signature of theirs. A LearntStore only keeps what it is given; `Learner` validates a
certificate exactly as a directory certificate (RecipientValidator: chain, dates,
revocation, key usage, the address) before it is stored, and the directory validates it
again at every lookup, so an expired or revoked one simply stops counting. The newest
valid certificate of an address wins, wherever it came from.

`FileStore` keeps plain files an operator can read and prune, one folder per address:

    <harvest>/ole@partner.dk/<SHA-256 of the certificate>.pem

each holding a few comment lines (where it came from, when), the certificate, then the
CA certificates that came with it (for path building). Files are written to a temporary
name, fsynced and renamed, so a reader (a `check` process, another worker) sees a whole
file or none.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.cluster import learnt_store
from gateway.config import Config
from gateway.directory import CertificateSource, DirectoryUnavailable
from gateway.directory.validate import (
    RecipientValidator,
    address_key,
    certificate_info,
    is_ca,
    named_addresses,
)
from gateway.model import RecipientClass
from gateway.observe import metrics

if TYPE_CHECKING:
    from gateway.cluster.database import Database

log = logging.getLogger(__name__)

SIGNATURE = "signature"  # the sources, as sendsikkert_certificates_learnt_total counts them
IMPORT = "import"


class LearntStore(CertificateSource, Protocol):
    """Where learnt certificates are kept (files here; PostgreSQL with `cluster.database`).

    `lookup` returns every certificate stored for the address and the CA certificates
    stored with them, like any CertificateSource.
    """

    async def add(self, address: str, certificate: bytes, chain: Sequence[bytes],
                  note: str) -> bool:
        """Keep `certificate` (DER) for `address` with its CA `chain`; False if already kept.

        `note` says where it came from, for the operator.
        """
        ...


@dataclass(frozen=True)
class Learnt:
    """What became of one certificate offered to the store."""

    subject: str
    added: tuple[str, ...] = ()  # addresses it is now stored for
    known: tuple[str, ...] = ()  # addresses it was already stored for
    described: str = ""  # subject, serial and expiry, when stored
    refused: str = ""  # why it is stored for no address

    @property
    def ok(self) -> bool:
        return not self.refused


class Learner:
    """Validates certificates as the directory would and stores the good ones."""

    def __init__(self, store: LearntStore, validator: RecipientValidator) -> None:
        self.store = store
        self.validator = validator

    async def learn(self, certificate: bytes, chain: Sequence[bytes], source: str,
                    note: str) -> Learnt:
        """Store `certificate` for every address it names that it is valid for.

        Valid means what makes a recipient `smime` (CONTRACT "Classes"); `chain` holds
        CA certificates for path building (others in it are ignored). DirectoryUnavailable
        when the store cannot be written.
        """
        try:
            cert = x509.load_der_x509_certificate(certificate)
            subject = cert.subject.rfc4514_string() or "(no subject)"
            addresses = sorted(named_addresses(cert))
            if is_ca(cert):
                return Learnt(subject, refused="a CA certificate, not a person's or a "
                                               "mailbox's")
        except ValueError as e:
            return Learnt("(unreadable)", refused=f"cannot be read: {e}")
        if not addresses:
            return Learnt(subject, refused="names no e-mail address")
        cas = [der for der in chain if _is_ca_der(der)]
        added, known, problems = [], [], []
        for address in addresses:
            choice = await self.validator.choose(address, [certificate, *cas])
            if choice.cls != RecipientClass.SMIME or choice.der != certificate:
                problems.append(f"{address}: {choice.reason}")
                continue
            if await self.store.add(address, certificate, cas, note):
                added.append(address)
            else:
                known.append(address)
        if added:
            metrics.certificates_learnt.labels(source=source).inc()
        if not added and not known:
            return Learnt(subject, refused="; ".join(problems))
        return Learnt(subject, tuple(added), tuple(known), certificate_info(cert).describe())


async def import_certificates(learner: Learner,
                              offers: Sequence[tuple[bytes, Sequence[bytes], str]]) -> list[Learnt]:
    """`certs import`: offer each (certificate, CA chain, note) as the source "import".

    DirectoryUnavailable when the store cannot be written.
    """
    return [await learner.learn(der, chain, IMPORT, note) for der, chain, note in offers]


def _is_ca_der(der: bytes) -> bool:
    try:
        return is_ca(x509.load_der_x509_certificate(der))
    except ValueError:
        return False


def open_store(config: Config, database: Database | None = None) -> LearntStore | None:
    """The store `inbound.harvest` names, in `database` for a cluster; None: learning is off."""
    if config.inbound.harvest is None:
        return None
    if database is not None:
        return learnt_store(database)
    return FileStore(config.inbound.harvest)


class FileStore:
    """Learnt certificates as PEM files, one folder per address (see the module docstring)."""

    backend = "learnt"

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, address: str) -> Path:
        """The address's folder: its characters as they are, but for a few (percent-encoded)."""
        name = quote(address_key(address), safe="@.+-_=!#$&'*^`{|}~")
        if "@" not in name:
            raise DirectoryUnavailable(f"learnt certificates: {address!r} is not an address")
        return self.root / ("%2E" + name[1:] if name.startswith(".") else name)

    async def lookup(self, address: str) -> list[bytes]:
        try:
            return await asyncio.to_thread(self._read, self.folder(address))
        except OSError as e:
            raise DirectoryUnavailable(f"learnt certificates: {e.strerror or e}") from None

    async def add(self, address: str, certificate: bytes, chain: Sequence[bytes],
                  note: str) -> bool:
        try:
            return await asyncio.to_thread(self._write, self.folder(address), certificate,
                                           list(chain), note)
        except OSError as e:
            raise DirectoryUnavailable(f"learnt certificates: {e.strerror or e}") from None

    async def ping(self) -> None:
        try:
            await asyncio.to_thread(os.listdir, self.root)
        except FileNotFoundError:
            return  # nothing learnt yet
        except OSError as e:
            raise DirectoryUnavailable(f"learnt certificates: {self.root}: {e.strerror}") \
                from None

    async def close(self) -> None:
        return None

    def _read(self, folder: Path) -> list[bytes]:
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".pem"))
        except FileNotFoundError:
            return []
        leaves: dict[bytes, None] = {}
        cas: dict[bytes, None] = {}
        for name in names:
            try:
                certs = x509.load_pem_x509_certificates((folder / name).read_bytes())
            except FileNotFoundError:
                continue  # pruned while we looked
            except ValueError as e:
                log.warning("learnt certificates: skipping %s: %s", folder / name, e)
                continue
            leaves[certs[0].public_bytes(Encoding.DER)] = None
            for cert in certs[1:]:
                cas[cert.public_bytes(Encoding.DER)] = None
        return list(leaves) + [c for c in cas if c not in leaves]

    def _write(self, folder: Path, certificate: bytes, chain: list[bytes], note: str) -> bool:
        path = folder / f"{hashlib.sha256(certificate).hexdigest()}.pem"
        if path.exists():
            return False
        cert = x509.load_der_x509_certificate(certificate)
        info = certificate_info(cert)
        lines = [f"# {line}" for line in (
            "send-sikkert: a learnt recipient certificate (delete this file to forget it)",
            f"subject: {info.subject}", f"serial: {info.serial}",
            f"valid until: {info.not_after}",
            f"learnt: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} from {note}",
        )]
        text = _printable("\n".join(lines)) + "\n" + "".join(
            x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode("ascii")
            for der in [certificate, *chain])
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True


def _printable(text: str) -> str:
    """Comment text without control characters (a subject may hold anything)."""
    return re.sub(r"[^\n\x20-\x7e\u00a0-\uffff]", "?", text)
