"""A byte-exact SMTP client for hostile-input tests: it sends what it is given, unchecked.

smtplib quotes, checks and rewrites what it sends; probes need the bytes as written::

    with RawSmtp(port) as s:
        s.command(b"EHLO x")                      # -> (250, [b"host", b"SIZE ...", ...])
        s.command(b"MAIL FROM:<a@brondby.dk>")
        code, _ = s.data(b"Subject: x\\r\\n\\r\\nbody\\r\\n")   # sends DATA, the bytes, ".\\r\\n"
"""

from __future__ import annotations

import socket
import ssl


class RawSmtp:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10,
                 source: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout,
                                             source_address=(source, 0) if source else None)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def __enter__(self) -> RawSmtp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def reply(self) -> tuple[int, list[bytes]]:
        """One (possibly multi-line) reply; (0, []) when the server closed the connection."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return 0, lines
            lines.append(line[4:].rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def command(self, line: bytes) -> tuple[int, list[bytes]]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def data(self, content: bytes) -> tuple[int, list[bytes]]:
        """DATA, then `content` exactly as given, then the end-of-data line."""
        code, lines = self.command(b"DATA")
        if code != 354:
            return code, lines
        self.sock.sendall(content + b".\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        self.file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.file = self.sock.makefile("rb")
