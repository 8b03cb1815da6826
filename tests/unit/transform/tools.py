"""Test tools for the transform tests: the test PKI and the independent S/MIME
implementations (OpenSSL, GnuPG's gpgsm) that must read what we produce."""

from __future__ import annotations

import email
import hashlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.partner import PASSPHRASE, gpgsm_pkcs12
from tests.support.pki import CA, Issued

SAMPLES = Path(__file__).parents[2] / "fixtures" / "samples"
STAMP = "Sendt sikkert via Ældre og Omsorg"


@dataclass
class Pki:
    root: CA
    department: Issued  # issued by an intermediate CA, so the chain matters
    recipient: Issued
    hidden: Issued  # a Bcc recipient
    dir: Path

    def files(self, who: Issued) -> tuple[Path, Path]:
        """The PEM certificate and key files of `who`."""
        name = who.cert.subject.rfc4514_string().replace("=", "_").replace("@", "_")
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        if not cert.exists():
            who.write(cert, key, with_chain=False)
        return cert, key


class OpenSSL:
    """The `openssl cms` command: decrypts and verifies as a recipient would."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki

    def run(self, *args: str | Path, data: bytes) -> bytes:
        done = subprocess.run(["openssl", "cms", *map(str, args)], input=data,
                              capture_output=True, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout

    def decrypt(self, message: bytes, who: Issued) -> bytes:
        cert, key = self.pki.files(who)
        return self.run("-decrypt", "-recip", cert, "-inkey", key, data=message)

    def cannot_decrypt(self, message: bytes, who: Issued) -> bool:
        cert, key = self.pki.files(who)
        done = subprocess.run(["openssl", "cms", "-decrypt", "-recip", str(cert),
                               "-inkey", str(key)], input=message, capture_output=True,
                              check=False)
        return done.returncode != 0

    def verify(self, signed: bytes) -> bytes:
        """The signed content, after the signature and chain were verified to the root."""
        return self.run("-verify", "-CAfile", self.pki.dir / "ca.pem", data=signed)


class Gpgsm:
    """GnuPG's S/MIME tool in a throw-away home, holding the recipient's key."""

    def __init__(self, home: Path, pki: Pki) -> None:
        self.home = home
        home.chmod(0o700)
        (home / "trustlist.txt").write_text(
            pki.root.cert.fingerprint(hashes.SHA1()).hex(":").upper() + " S relax\n")
        self.run("--import", self.write("recipient.p12",
                                        gpgsm_pkcs12(b"recipient", pki.recipient)))
        self.run("--import", self.write("public.pem", pki.root.pem + pki.department.pem + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in pki.department.chain)))

    def write(self, name: str, data: bytes) -> str:
        path = self.home / name
        path.write_bytes(data)
        return str(path)

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(
            ["gpgsm", "--homedir", str(self.home), "--batch", "--disable-dirmngr",
             "--disable-crl-checks", "--disable-policy-checks", "--pinentry-mode", "loopback",
             "--passphrase-fd", "0", *args],
            input=PASSPHRASE.encode() + b"\n", capture_output=True, check=False, timeout=30)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done

    def decrypt(self, message: bytes) -> bytes:
        """The decrypted content of an application/pkcs7-mime message."""
        # gpgsm reads CMS, not MIME: taking the body out is the mail client's part.
        der = email.message_from_bytes(message).get_payload(decode=True)
        return self.run("--decrypt", self.write("message.p7m", der)).stdout

    def verify(self, content: bytes, signature: bytes) -> str:
        """gpgsm's report on a detached signature over exactly `content`."""
        return self.run("--verify", self.write("signature.p7s", signature),
                        self.write("content", content)).stderr.decode(errors="replace")


def signed_parts(signed: bytes) -> tuple[bytes, bytes]:
    """The exact signed content and the DER signature of a multipart/signed entity."""
    message = email.message_from_bytes(signed)
    boundary = message.get_boundary().encode()
    body = signed.split(b"\r\n\r\n", 1)[1]
    pieces = body.split(b"\r\n--" + boundary)
    content = pieces[1].split(b"\r\n", 1)[1]  # after the first delimiter's line end
    signature = message.get_payload()[1].get_payload(decode=True)
    return content, signature


def signed_data(signature: bytes) -> cms.SignedData:
    info = cms.ContentInfo.load(signature)
    assert info["content_type"].native == "signed_data"
    return info["content"]


def enveloped_data(message: bytes) -> cms.EnvelopedData:
    der = email.message_from_bytes(message).get_payload(decode=True)
    info = cms.ContentInfo.load(der)
    assert info["content_type"].native == "enveloped_data"
    return info["content"]


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def cert_id(issued: Issued) -> tuple[bytes, int]:
    cert = issued.cert
    return cert.issuer.public_bytes(), cert.serial_number


def recipient_ids(message: bytes) -> set[tuple[bytes, int]]:
    """(issuer, serial) of every recipient named in an enveloped-data message."""
    ids = set()
    for info in enveloped_data(message)["recipient_infos"]:
        rid = info.chosen["rid"].chosen
        ids.add((rid["issuer"].dump(), rid["serial_number"].native))
    return ids


def whole_signed_data(content: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey,
                      chain: Sequence[x509.Certificate], now: datetime) -> bytes:
    """The SignedData of `Signer`, built whole by asn1crypto: the reference it must equal."""
    def asn1(c: x509.Certificate) -> asn1_x509.Certificate:
        return asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))

    signer = asn1(cert)
    signer_id = cms.IssuerAndSerialNumber({"issuer": signer.issuer,
                                           "serial_number": signer.serial_number})
    attributes = cms.CMSAttributes(sorted([
        cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
        cms.CMSAttribute({"type": "signing_time",
                          "values": [cms.Time({"utc_time": now.replace(microsecond=0)})]}),
        cms.CMSAttribute({"type": "message_digest",
                          "values": [hashlib.sha256(content).digest()]}),
        cms.CMSAttribute({"type": "smime_capabilities", "values": [
            [{"capability_id": n} for n in ("aes256_cbc", "aes192_cbc", "aes128_cbc")]]}),
        cms.CMSAttribute({"type": "encrypt_key_pref", "values": [
            cms.SMIMEEncryptionKeyPreference({"issuer_and_serial_number": signer_id})]}),
    ], key=lambda a: a.dump()))
    signature = key.sign(attributes.dump(), padding.PKCS1v15(), hashes.SHA256())
    signer_info = cms.SignerInfo({
        "version": "v1", "sid": cms.SignerIdentifier({"issuer_and_serial_number": signer_id}),
        "digest_algorithm": {"algorithm": "sha256"}, "signed_attrs": attributes,
        "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"}, "signature": signature,
    })
    data = cms.SignedData({
        "version": "v1", "digest_algorithms": [{"algorithm": "sha256"}],
        "encap_content_info": {"content_type": "data"},
        "certificates": [cms.CertificateChoices({"certificate": asn1(c)})
                         for c in [cert, *[c for c in chain if c != cert]]],
        "signer_infos": [signer_info],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": data}).dump()
