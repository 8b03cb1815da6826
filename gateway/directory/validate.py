"""Decide whether a recipient can get S/MIME: pick the certificate to encrypt to, or say why not.

A certificate qualifies when it names the exact address (RFC 8550 §3: SAN rfc822Name or
subject emailAddress; local part exact, domain case-insensitive as in RFC 5280 §7.5),
carries an RSA key whose KeyUsage allows keyEncipherment (RFC 8550 §4.4.2, needed for
RSA key transport), whose ExtendedKeyUsage, if present, allows emailProtection
(RFC 8550 §4.4.4), and whose path to a configured trust anchor validates (RFC 5280 §6)
and is not revoked by a configured CRL (RFC 5280 §6.3). Path building, path validation
and CRL processing are pyhanko-certvalidator's; this module only adds the S/MIME rules
and turns the outcome into a short reason for people.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, PublicKeyAlgorithmOID
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import (
    CRLNoMatchesError,
    CRLValidationError,
    ExpiredError,
    NotYetValidError,
    PathError,
    RevokedError,
    ValidationError,
)
from pyhanko_certvalidator.path import ValidationPath
from pyhanko_certvalidator.policy_decl import NO_REVOCATION, CertRevTrustPolicy
from pyhanko_certvalidator.revinfo.validate_crl import verify_crl

from gateway.directory.choices import ChoiceCache
from gateway.directory.crl import IndexedCrls, Revocation
from gateway.model import CertificateInfo, RecipientClass

if TYPE_CHECKING:
    from gateway.directory.crl import CrlStore

REVOCATION_MODES = ("soft-fail", "hard-fail")

NO_CERTIFICATE = "no certificate"
NOT_TRUSTED = "not trusted"
NOT_FOR_ADDRESS = "does not name this address"
NOT_RSA = "not an RSA key"
NOT_KEY_ENCIPHERMENT = "not for key encipherment"
NOT_EMAIL_PROTECTION = "not for e-mail protection"
NOT_DIGITAL_SIGNATURE = "not for digital signatures"
REVOCATION_UNAVAILABLE = "revocation status unavailable"

# Revocation is checked after path validation, certificate by certificate, so that a
# missing CRL can be told apart from a revoked one (see _revocation_problem).
_PATH_ONLY = CertRevTrustPolicy(NO_REVOCATION)


@dataclass(frozen=True)
class Choice:
    """The verdict for one address: its class, the reason for people, the certificate."""

    cls: RecipientClass
    reason: str
    certificate: CertificateInfo | None = None
    der: bytes | None = field(default=None, repr=False)  # only for SMIME: encrypt to this


def address_key(address: str) -> str:
    """The form addresses are compared in: local part exact, domain lowercased."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def named_addresses(cert: x509.Certificate) -> set[str]:
    """Every e-mail address the certificate names, as address_key() forms."""
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        pass
    return {address_key(str(n)) for n in names}


def is_ca(cert: x509.Certificate) -> bool:
    """Whether the certificate is a CA (an intermediate, never a recipient certificate)."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def certificate_info(cert: x509.Certificate) -> CertificateInfo:
    """What `check` shows about a certificate."""
    serial = f"{cert.serial_number:X}"
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        serial=serial.zfill(len(serial) + len(serial) % 2),
        not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


class RecipientValidator:
    """Chooses the certificate a recipient's mail is encrypted to, with RFC 5280 validation."""

    def __init__(
        self,
        trust_anchors: Sequence[x509.Certificate],
        intermediates: Sequence[x509.Certificate] = (),
        crls: CrlStore | None = None,
        revocation: str = "soft-fail",
        choices: ChoiceCache[Choice] | None = None,
    ) -> None:
        if not trust_anchors:
            raise ValueError("at least one trust anchor is needed")
        if revocation not in REVOCATION_MODES:
            raise ValueError(f"revocation must be one of {', '.join(REVOCATION_MODES)}")
        self.crls = crls
        self._hard_fail = revocation == "hard-fail"
        self._anchors = [_asn1(c.public_bytes(Encoding.DER)) for c in trust_anchors]
        self._intermediates = [_asn1(c.public_bytes(Encoding.DER)) for c in intermediates]
        # A choice is good until the first of its certificates expires, these included.
        self._configured_until = min(c.not_valid_after_utc
                                     for c in (*trust_anchors, *intermediates))
        self._choices: ChoiceCache[Choice] = choices if choices is not None else ChoiceCache()
        # One worker: the parsed anchors and CRLs are shared between validations and
        # asn1crypto's lazy parsing is not thread-safe; the GIL would serialise it anyway.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recipient-validator")

    async def choose(self, address: str, ders: list[bytes], now: datetime | None = None) -> Choice:
        """Classify an address from the DER certificates its directory entry holds.

        CA certificates among `ders` serve as intermediates, never as candidates. The
        work is CPU-bound, so it runs in the validator's worker thread; a certificate
        chosen for the same address, certificates and CRLs a little earlier is taken
        again without (gateway.directory.choices).
        """
        moment = _moment(now)
        crls = await self._crls()
        key = address_key(address)
        kept = self._choices.get(key, ders, moment, crls)
        if kept is not None:
            return kept
        loop = asyncio.get_running_loop()
        choice, until = await loop.run_in_executor(
            self._worker, self._choose_blocking, address, list(ders), moment, crls)
        if choice.cls == RecipientClass.SMIME:
            self._choices.put(key, ders, choice, moment, crls, until)
        return choice

    async def signer_problem(self, address: str, der: bytes, others: Sequence[bytes] = (),
                             now: datetime | None = None) -> str | None:
        """Why the certificate `der` cannot vouch for a signature by `address`; None if it can.

        The same path validation as `choose` (chain to a trust anchor, dates, CRLs), with
        the rules for signing instead of encrypting: the certificate names the address,
        allows digitalSignature or nonRepudiation (RFC 8550 4.4.2) and, with an
        ExtendedKeyUsage, emailProtection (4.4.4). CA certificates among `others` serve
        as intermediates.
        """
        moment = _moment(now)
        crls = await self._crls()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._worker, self._signer_blocking, address, der, list(others), moment, crls)

    async def _crls(self) -> list[asn1_crl.CertificateList]:
        """The CRLs at hand, loaded first: no certificate is judged before its CRL is known
        (a `check` or `certs import` process never starts the refresh task)."""
        if self.crls is None:
            return []
        await self.crls.ensure_loaded()
        return self.crls.current()

    def close(self) -> None:
        """Stop the worker thread once the validations already asked for are done."""
        self._worker.shutdown(wait=False)

    def _choose_blocking(self, address: str, ders: list[bytes], moment: datetime,
                         crls: list[asn1_crl.CertificateList]) -> tuple[Choice, datetime]:
        """The choice, and until when it may be kept (see _valid_until)."""
        # pyhanko-certvalidator is async only for fetching, which is off: a private
        # loop in this thread runs it without touching the caller's loop.
        choice = asyncio.run(self._choose(address_key(address), ders, moment, crls))
        return choice, self._valid_until(ders, crls)

    def _valid_until(self, ders: list[bytes], crls: list[asn1_crl.CertificateList]) -> datetime:
        """The first end of validity among the certificates and the CRLs' next updates."""
        ends = [self._configured_until]
        ends += [cert.not_valid_after_utc for der in ders if (cert := _parse(der))]
        for crl in crls:
            next_update = crl["tbs_cert_list"]["next_update"].native
            ends.append(next_update if next_update is not None else datetime.min.replace(
                tzinfo=UTC))  # no nextUpdate: nothing is kept
        return min(ends)

    def _signer_blocking(self, address: str, der: bytes, others: list[bytes],
                         moment: datetime, crls: list[asn1_crl.CertificateList]) -> str | None:
        cert = _parse(der)
        if cert is None:
            return "the signer's certificate cannot be read"
        cas = [other for other in others if (c := _parse(other)) and is_ca(c)]
        context = self._context(cas, moment, crls)
        return asyncio.run(self._problem(address_key(address), der, cert, context,
                                         _signing_problem))

    def _context(self, cas: list[bytes], moment: datetime,
                 crls: list[asn1_crl.CertificateList]) -> ValidationContext:
        return ValidationContext(
            trust_roots=self._anchors,
            other_certs=self._intermediates + [_asn1(der) for der in cas],
            crls=crls,
            revinfo_policy=_PATH_ONLY,
            moment=moment,
        )

    async def _choose(self, address: str, ders: list[bytes], moment: datetime,
                      crls: list[asn1_crl.CertificateList]) -> Choice:
        parsed = [(der, cert) for der in dict.fromkeys(ders) if (cert := _parse(der))]
        cas = [der for der, cert in parsed if is_ca(cert)]
        candidates = sorted(((der, cert) for der, cert in parsed if not is_ca(cert)),
                            key=lambda pair: pair[1].not_valid_before_utc, reverse=True)
        if not candidates:
            return Choice(RecipientClass.UNSAFE, NO_CERTIFICATE)
        context = self._context(cas, moment, crls)
        problems: list[tuple[x509.Certificate, str]] = []
        for der, cert in candidates:  # newest first: the first good one wins
            problem = await self._problem(address, der, cert, context)
            if problem is None:
                info = certificate_info(cert)
                return Choice(RecipientClass.SMIME, f"certificate {info.describe()}", info, der)
            problems.append((cert, problem))
        # A certificate that may turn out good on retry outranks every bad one.
        for cert, problem in problems:
            if problem == REVOCATION_UNAVAILABLE:
                return Choice(RecipientClass.UNKNOWN, problem, certificate_info(cert))
        # The newest certificate that names the address explains best what is wrong.
        cert, problem = max(problems, key=lambda p: address in named_addresses(p[0]))
        return Choice(RecipientClass.UNSAFE, problem, certificate_info(cert))

    async def _problem(self, address: str, der: bytes, cert: x509.Certificate,
                       context: ValidationContext,
                       rule: Callable[[str, x509.Certificate], str | None] | None = None,
                       ) -> str | None:
        """Why this certificate cannot be used for the address; None when it can."""
        problem = (rule or _smime_problem)(address, cert)
        if problem:
            return problem
        validator = CertificateValidator(_asn1(der), validation_context=context)
        try:
            path = await validator.async_validate_path()
        except ExpiredError as e:
            return f"expired {e.expired_dt:%Y-%m-%d}" if e.is_ee_cert else NOT_TRUSTED
        except NotYetValidError as e:
            return f"not valid before {e.valid_from:%Y-%m-%d}" if e.is_ee_cert else NOT_TRUSTED
        except (PathError, ValidationError):
            return NOT_TRUSTED
        return await self._revocation_problem(path, context)

    async def _revocation_problem(self, path: ValidationPath,
                                  context: ValidationContext) -> str | None:
        """Check every certificate of the validated path against the CRLs at hand.

        Hard-fail wants a usable CRL for the recipient certificate, and for a CA
        certificate when it declares a distribution point or a CRL of its issuer is
        held but unusable (stale, bad signature). Soft-fail accepts whatever is unknown.
        """
        unavailable = False
        # The CRLs held now, looked up by serial (an OCES list is too long to scan).
        indexed = self.crls.indexed() if self.crls else IndexedCrls([])
        members = list(path.iter_certs(include_root=False))  # the recipient's comes last
        for i, member in enumerate(members, 1):
            known = _indexed_status(indexed, member, path, context.moment)
            if known is not None:  # a complete, current CRL of the issuer, looked up by serial
                if known.revoked:
                    return f"revoked {known.date:%Y-%m-%d}"
                continue
            try:
                await verify_crl(member, path, context)
            except RevokedError as e:
                return f"revoked {e.revocation_dt:%Y-%m-%d}"
            except CRLNoMatchesError:
                unavailable |= i == len(members) or bool(member.crl_distribution_points)
            except CRLValidationError:
                unavailable = True
        return REVOCATION_UNAVAILABLE if unavailable and self._hard_fail else None


def _moment(now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _indexed_status(indexed: IndexedCrls, member: asn1_x509.Certificate, path: ValidationPath,
                    moment: datetime) -> Revocation | None:
    """The serial index's answer for one path member; None when pyhanko must decide."""
    try:
        authority = path.find_issuing_authority(member)
        key = serialization.load_der_public_key(authority.public_key.dump())
        cert = x509.load_der_x509_certificate(member.dump())
    except (LookupError, ValueError):
        return None
    return indexed.status(cert.serial_number, cert.issuer, key, moment)


def _smime_problem(address: str, cert: x509.Certificate) -> str | None:
    """What makes the certificate unusable for encrypting mail to the address, if anything."""
    if address not in named_addresses(cert):
        return NOT_FOR_ADDRESS
    if cert.public_key_algorithm_oid != PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5:
        return NOT_RSA
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment:
            return NOT_KEY_ENCIPHERMENT
    except x509.ExtensionNotFound:
        pass  # no KeyUsage: every use is allowed (RFC 5280 §4.2.1.3)
    return _email_usage_problem(cert)


def _signing_problem(address: str, cert: x509.Certificate) -> str | None:
    """What makes the certificate unusable for vouching for mail signed by the address."""
    if address not in named_addresses(cert):
        return NOT_FOR_ADDRESS
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not (usage.digital_signature or usage.content_commitment):
            return NOT_DIGITAL_SIGNATURE
    except x509.ExtensionNotFound:
        pass
    return _email_usage_problem(cert)


def _email_usage_problem(cert: x509.Certificate) -> str | None:
    """RFC 8550 4.4.4: an ExtendedKeyUsage must allow emailProtection."""
    extensions = cert.extensions
    try:
        usages = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if not {ExtendedKeyUsageOID.EMAIL_PROTECTION,
                ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(usages):
            return NOT_EMAIL_PROTECTION
    except x509.ExtensionNotFound:
        pass
    return None


def _parse(der: bytes) -> x509.Certificate | None:
    """The certificate, or None when it or its extensions cannot be parsed (ignored)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        # Both parsers read lazily: fail here rather than halfway through a validation.
        _ = cert.subject, cert.extensions, _asn1(der).native
    except ValueError:
        return None
    return cert


def _asn1(der: bytes) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(der)
