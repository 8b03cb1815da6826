"""HTTPS on the HTTP listener ([http.tls]), with a certificate that SIGHUP replaces.

Outlook loads add-ins only over https. The listener keeps one server context for its
whole life; `reload()` first loads the new certificate and key into a scratch context,
and only when that works into the live one, so a broken or mismatched file never
replaces a working certificate. New handshakes get the new certificate, connections
already open keep theirs. TLS 1.2 at least (RFC 9325).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from gateway.config import Config, ConfigError


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class HttpsContext:
    """The HTTP listener's server-side TLS context and the files it was loaded from."""

    def __init__(self, config_file: Path, cert: Path, key: Path) -> None:
        self.context = _context()
        self.config_file = config_file
        self.reload(cert, key)

    def reload(self, cert: Path, key: Path) -> None:
        """Take the certificate chain and key from these files; ConfigError when they are bad."""
        try:
            _context().load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(self.config_file, "http.tls.cert",
                              f"cannot load {cert} with {key}: {e}") from None
        self.context.load_cert_chain(cert, key)
        self.cert, self.key = cert, key


def https_context(config: Config) -> HttpsContext | None:
    """The context for `[http.tls]`, None for plain HTTP; ConfigError for unusable files."""
    tls = config.http.tls
    return HttpsContext(config.path, tls.cert, tls.key) if tls else None
