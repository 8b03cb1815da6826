"""CRL lookups at national scale: a CRL of 200,000 revoked serials, timed per validation.

Builds a CA, a recipient certificate and a CRL listing 200,000 other serials (and,
for the second check, the recipient's own), then times RecipientValidator.choose,
which is what every tagged S/MIME recipient costs after a cache miss.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.directory.choices import ChoiceCache
from gateway.directory.crl import CrlStore
from gateway.directory.validate import RecipientValidator
from gateway.model import RecipientClass

SERIALS = 200_000
ADDRESS = "borger@example.dk"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pki(now: datetime) -> tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]:
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(_name("Bench CA")).issuer_name(_name("Bench CA"))
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (x509.CertificateBuilder().subject_name(_name(ADDRESS)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(SERIALS * 10)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(ADDRESS)]), False)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
            .sign(ca_key, hashes.SHA256()))
    return ca, ca_key, leaf


def _crl(ca: x509.Certificate, key: rsa.RSAPrivateKey, now: datetime,
         extra: int | None) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(now - timedelta(hours=1)).next_update(now + timedelta(days=1)))
    serials = list(range(1000, 1000 + SERIALS)) + ([extra] if extra else [])
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - timedelta(days=2)).build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


async def _time(directory: Path, ca: x509.Certificate, leaf: x509.Certificate, crl_file: Path,
                rounds: int) -> tuple[list[float], RecipientClass]:
    store = CrlStore([str(crl_file)], [ca])
    await store.ensure_loaded()
    # Nothing kept between rounds: every round validates the path and looks the CRL up.
    validator = RecipientValidator([ca], crls=store, revocation="hard-fail",
                                   choices=ChoiceCache(ttl=0))
    der = leaf.public_bytes(serialization.Encoding.DER)
    times, cls = [], RecipientClass.UNKNOWN
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            choice = await validator.choose(ADDRESS, [der])
            times.append(time.perf_counter() - started)
            cls = choice.cls
    finally:
        validator.close()
        await store.close()
    return times, cls


def measure(directory: Path, rounds: int = 20) -> dict[str, Any]:
    """ms per recipient validation with the big CRL, for a good and a revoked certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca, key, leaf = _pki(now)
    good, bad = directory / "good.crl", directory / "bad.crl"
    good.write_bytes(_crl(ca, key, now, None))
    bad.write_bytes(_crl(ca, key, now, leaf.serial_number))
    times, cls = asyncio.run(_time(directory, ca, leaf, good, rounds))
    revoked_times, revoked_cls = asyncio.run(_time(directory, ca, leaf, bad, 3))
    times.sort()
    return {"serials": SERIALS, "rounds": rounds,
            "lookup_p50_ms": times[len(times) // 2] * 1000, "lookup_max_ms": times[-1] * 1000,
            "first_ms": times[0] * 1000, "good_class": str(cls),
            "revoked_found": revoked_cls == RecipientClass.UNSAFE,
            "revoked_p50_ms": sorted(revoked_times)[1] * 1000}
