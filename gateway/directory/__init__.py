"""Certificate directory: where recipient certificates come from, behind one protocol.

A CertificateSource returns the raw DER certificates published for an address (files
backend, LDAP backend); validation and choice of the certificate happen elsewhere, the
same for every source. A source that cannot answer raises DirectoryUnavailable, which
makes the recipient `unknown`, never `unsafe`.
"""

from __future__ import annotations

from typing import Protocol


class DirectoryUnavailable(Exception):
    """The directory could not answer (down, timeout, bind failure)."""


class CertificateSource(Protocol):
    """Where recipient certificates are published."""

    backend: str  # "files" or "ldap": the metrics label

    async def lookup(self, address: str) -> list[bytes]:
        """Every DER certificate published for this exact address ([] when none)."""
        ...

    async def ping(self) -> None:
        """Raise DirectoryUnavailable when the source cannot be reached (for /readyz)."""
        ...

    async def close(self) -> None:
        ...
