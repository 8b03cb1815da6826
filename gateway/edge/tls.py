"""The TLS server context of the SMTP edge (RFC 3207 STARTTLS): Mozilla's "intermediate"
configuration (version 5.7) by default.

TLS 1.2 and 1.3; for TLS 1.2 only AEAD suites with forward secrecy (ECDHE, and DHE
with the RFC 7919 ffdhe2048 group); no renegotiation, no compression, no session
tickets, the client's cipher preference. Python's ssl module cannot set a list of key
exchange groups, so they are OpenSSL's defaults (X25519, P-256, X448, P-521, P-384), a
superset of Mozilla's X25519, P-256, P-384 with nothing weak in it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

INTERMEDIATE_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
])
_FFDHE2048 = Path(__file__).with_name("ffdhe2048.pem")  # RFC 7919 appendix A.1


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for `cert` and `key`; OSError or ssl.SSLError when they do not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(INTERMEDIATE_CIPHERS)  # TLS 1.3 suites are OpenSSL's: all three AEAD
    context.load_dh_params(str(_FFDHE2048))
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.verify_mode = ssl.CERT_NONE  # clients are not asked for certificates
    context.load_cert_chain(cert, key)
    return context
