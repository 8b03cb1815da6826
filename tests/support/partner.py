"""A partner's mail client outside the municipality: makes S/MIME mail as real ones do.

Signatures and encryption come from the independent implementations `openssl cms` and
GnuPG's `gpgsm`, never from the gateway's own code, so the gateway's decryption and
verification are tested against what other software sends::

    partner = Partner(tmp_path / "ole", ca.issue("ole@partner.dk"), ca)
    signed = partner.sign(entity)                        # multipart/signed, openssl
    mail = partner.mail(partner.encrypt(signed, [department_cert], cipher="aes-128-gcm"),
                        to="aeldreomsorg@brondby.dk", subject="Sv: ...", in_reply_to=mid)
"""

from __future__ import annotations

import base64
import email
import hashlib
import re
import subprocess
from collections.abc import Sequence
from email.utils import formatdate, make_msgid
from pathlib import Path

from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.support.pki import CA, Issued

PASSPHRASE = "test"
CRLF = b"\r\n"


def crlf(data: bytes) -> bytes:
    """Every line ending as CRLF, as SMTP carries mail."""
    return re.sub(rb"\r?\n", CRLF, data)


def text_entity(text: str) -> bytes:
    """A text/plain MIME entity, the content a partner signs or encrypts."""
    return (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            b"\r\n" + text.replace("\n", "\r\n").encode("utf-8"))


def pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class Partner:
    """One person outside with a certificate and key, writing mail with openssl or gpgsm."""

    def __init__(self, home: Path, identity: Issued, ca: CA) -> None:
        self.home = home
        self.identity = identity
        self.ca = ca
        home.mkdir(parents=True, exist_ok=True)
        self.cert = home / "cert.pem"
        self.key = home / "key.pem"
        identity.write(self.cert, self.key, with_chain=False)
        self.chain = home / "chain.pem"
        self.chain.write_bytes(pem(identity.chain))
        self._gpgsm_home: Path | None = None

    @property
    def address(self) -> str:
        san = self.identity.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.RFC822Name)[0]

    # --- openssl cms ----------------------------------------------------------------------

    def openssl(self, *args: str | Path, data: bytes) -> bytes:
        done = subprocess.run(["openssl", "cms", *map(str, args)], input=data,
                              capture_output=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout

    def sign(self, entity: bytes, opaque: bool = False) -> bytes:
        """The entity signed by `openssl cms`: multipart/signed, or signed-data when opaque."""
        chain = ["-certfile", self.chain] if self.identity.chain else []
        out = self.openssl("-sign", "-signer", self.cert, "-inkey", self.key, *chain,
                           "-md", "sha256", "-binary", *(["-nodetach"] if opaque else []),
                           data=crlf(entity))
        return _entity_only(crlf(out))

    def encrypt(self, entity: bytes, to: Sequence[x509.Certificate], cipher: str = "aes256",
                oaep: bool = False, keyid: bool = False) -> bytes:
        """The entity encrypted by `openssl cms` to the certificates `to`."""
        files = []
        for i, cert in enumerate(to):
            path = self.home / f"recipient{i}.pem"
            path.write_bytes(pem([cert]))
            files.append(path)
        options: list[str] = []
        if oaep:
            options += ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"]
        if keyid:
            options.append("-keyid")
        # Options after -recip apply to that recipient.
        recipients = [arg for path in files for arg in ("-recip", str(path), *options)]
        out = self.openssl("-encrypt", f"-{cipher}", "-binary", *recipients,
                           data=crlf(entity))
        return _entity_only(crlf(out))

    # --- gpgsm ----------------------------------------------------------------------------

    def gpgsm(self, *args: str) -> bytes:
        home = self._gpgsm()
        done = subprocess.run(
            ["gpgsm", "--homedir", str(home), "--batch", "--disable-dirmngr",
             "--disable-crl-checks", "--disable-policy-checks", "--pinentry-mode", "loopback",
             "--passphrase-fd", "0", *args],
            input=PASSPHRASE.encode() + b"\n", capture_output=True, check=False, timeout=60)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout

    def gpgsm_sign(self, entity: bytes) -> bytes:
        """The entity in a multipart/signed with a detached signature by gpgsm."""
        content = crlf(entity)
        path = self._gpgsm() / "content"
        path.write_bytes(content)
        signature = self.gpgsm("--detach-sign", "--include-certs", "-1", str(path))
        return multipart_signed(content, signature)

    def gpgsm_encrypt(self, entity: bytes, to: Sequence[x509.Certificate],
                      cipher: str = "AES256") -> bytes:
        """The entity encrypted by gpgsm to the certificates `to`."""
        home = self._gpgsm()
        (home / "recipients.pem").write_bytes(pem(to))
        self.gpgsm("--import", str(home / "recipients.pem"))
        path = home / "plain"
        path.write_bytes(crlf(entity))
        recipients = [a for c in to for a in ("-r", "0x" + c.fingerprint(hashes.SHA1()).hex())]
        der = self.gpgsm("--encrypt", "--cipher-algo", cipher, *recipients, str(path))
        return enveloped_entity(der)

    def close(self) -> None:
        """Stop the gpg-agent this partner's gpgsm home started, and nothing else."""
        if self._gpgsm_home is not None:
            subprocess.run(["gpgconf", "--homedir", str(self._gpgsm_home), "--kill", "all"],
                           check=False, capture_output=True, timeout=30)

    def _gpgsm(self) -> Path:
        if self._gpgsm_home is not None:
            return self._gpgsm_home
        home = self.home / "gnupg"
        home.mkdir(mode=0o700)
        self._gpgsm_home = home
        root = self.ca
        while root.parent is not None:
            root = root.parent
        (home / "trustlist.txt").write_text(
            root.cert.fingerprint(hashes.SHA1()).hex(":").upper() + " S relax\n")
        (home / "partner.p12").write_bytes(gpgsm_pkcs12(b"partner", self.identity))
        (home / "public.pem").write_bytes(root.pem + pem(self.identity.chain))
        self.gpgsm("--import", str(home / "public.pem"))
        self.gpgsm("--import", str(home / "partner.p12"))
        return home

    # --- the message ----------------------------------------------------------------------

    def mail(self, entity: bytes, *, to: str, subject: str = "Sv: Vedr. din mor",
             in_reply_to: str = "", references: str = "", message_id: str = "",
             sender: str = "", extra: Sequence[str] = ()) -> bytes:
        """A whole message: the partner's header fields around the MIME entity."""
        fields = [f"From: Ole Partner <{sender or self.address}>", f"To: {to}",
                  f"Subject: {subject}", f"Date: {formatdate()}",
                  f"Message-ID: {message_id or make_msgid(domain='partner.dk')}"]
        if in_reply_to:
            fields.append(f"In-Reply-To: {in_reply_to}")
        if references or in_reply_to:
            fields.append(f"References: {references or in_reply_to}")
        fields += [*extra, "MIME-Version: 1.0"]
        return "\r\n".join(fields).encode("utf-8") + CRLF + crlf(entity)


def gpgsm_pkcs12(name: bytes, who: Issued) -> bytes:
    """`who`'s key and certificate as PKCS#12 that gpgsm 2.2 can import (old PBE only).

    gpgsm 2.2's own RFC 7292 key derivation goes wrong for about one salt in a hundred:
    when a sum in its step B.2 6(b) has a leading zero byte, it writes that block back
    one byte short, derives another 3DES key and reports "decryption failed" for the
    right passphrase. Such a file is made again with new salts, so gpgsm always gets one
    it reads correctly.
    """
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .kdf_rounds(2048)
                  .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
                  .hmac_hash(hashes.SHA1())
                  .build(PASSPHRASE.encode()))
    while True:
        data = pkcs12.serialize_key_and_certificates(name, who.key, who.cert, None, encryption)
        if not any(_gpgsm_misderives(salt, rounds) for salt, rounds in _pbe_salts(data)):
            return data


def _pbe_salts(data: bytes) -> list[tuple[bytes, int]]:
    """(salt, iterations) of each password-encrypted part of a PKCS#12 file."""
    params = []
    for info in asn1_pkcs12.Pfx.load(data).authenticated_safe:
        if info["content_type"].native == "encrypted_data":  # the certificates
            algorithm = info["content"]["encrypted_content_info"]["content_encryption_algorithm"]
            params.append(algorithm["parameters"])
        else:
            for bag in asn1_pkcs12.SafeContents.load(info["content"].native):
                if bag["bag_id"].native == "pkcs8_shrouded_key_bag":  # the key
                    params.append(bag["bag_value"]["encryption_algorithm"]["parameters"])
    return [(p["salt"].native, p["iterations"].native) for p in params]


def _gpgsm_misderives(salt: bytes, iterations: int) -> bool:
    """Whether gpgsm 2.2 derives a wrong 3DES key from PASSPHRASE and `salt`.

    RFC 7292 B.2 with SHA-1 (v = 64 bytes): a 24-byte key needs a second hash, after
    each 64-byte block I_j of I has become I_j + B + 1 (mod 2^512). gpgsm prints that
    sum without its leading zero bytes into the block's place.
    """
    password = (PASSPHRASE + "\0").encode("utf-16-be")  # a BMPString with its terminator
    i = (salt * 64)[:64] + (password * 64)[:64]
    a = hashlib.sha1(b"\x01" * 64 + i).digest()  # ID 1: key material
    for _ in range(iterations - 1):
        a = hashlib.sha1(a).digest()
    b = int.from_bytes((a * 4)[:64], "big")
    return any((int.from_bytes(i[j:j + 64], "big") + b + 1) % 2**512 < 2**504 for j in (0, 64))


def _entity_only(smime: bytes) -> bytes:
    """openssl's S/MIME output without its MIME-Version line (the message adds its own)."""
    return re.sub(rb"(?im)^MIME-Version:[^\r\n]*\r\n", b"", smime, count=1)


def multipart_signed(content: bytes, signature: bytes, boundary: str = "partner-signed") -> bytes:
    """A multipart/signed entity (RFC 1847, RFC 8551 3.5) around a detached signature."""
    b = boundary.encode()
    return (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
            b'micalg=sha-256; boundary="' + b + b'"\r\n\r\n'
            b"--" + b + CRLF + content + CRLF + b"--" + b + CRLF
            + b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
              b"Content-Transfer-Encoding: base64\r\n"
              b"Content-Disposition: attachment; filename=smime.p7s\r\n\r\n"
            + base64.encodebytes(signature).replace(b"\n", CRLF)
            + b"--" + b + b"--" + CRLF)


def enveloped_entity(der: bytes) -> bytes:
    """An application/pkcs7-mime enveloped-data entity (RFC 8551 3.3) around CMS bytes."""
    return (b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; "
            b"name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=smime.p7m\r\n\r\n"
            + base64.encodebytes(der).replace(b"\n", CRLF))


def body_der(message: bytes) -> bytes:
    """The CMS bytes of an application/pkcs7-mime message."""
    payload = email.message_from_bytes(message).get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload
