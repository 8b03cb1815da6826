"""An HTTPS server for tests that serves MTA-STS policies (RFC 8461 3.2) on loopback.

It runs in the test's event loop (aiohttp), answering `/.well-known/mta-sts.txt` by the
Host header: each policy domain `d` is served as `mta-sts.d`::

    async with PolicyHost(tls=server_tls(ca, "mta-sts.sts.test")) as host:
        host.policies["sts.test"] = policy("enforce", "*.sts.test")  # as RFC 8461 3.2
        host.replies["broken.test"] = (404, "text/plain", "gone")   # anything else, verbatim
        ...                                   # the DNS server points mta-sts.sts.test at host.host
        assert host.requests == ["sts.test"]

Several hosts may share one port on different loopback addresses (`port=` of the first),
as all policy hosts share `transport_security.policy_port`. `stall=True` accepts the
request and never answers, for timeouts.
"""

from __future__ import annotations

import asyncio
import ssl

from aiohttp import web


class PolicyHost:
    """Policies by domain; `replies` overrides them with (status, content type, body)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None, stall: bool = False) -> None:
        self.host, self.port, self.tls, self.stall = host, port, tls, stall
        self.policies: dict[str, str] = {}
        self.replies: dict[str, tuple[int, str, str | bytes]] = {}
        self.headers: dict[str, dict[str, str]] = {}  # extra response headers by domain
        self.requests: list[str] = []  # the policy domains asked for, in order
        self._runner: web.AppRunner | None = None

    async def _serve(self, request: web.Request) -> web.Response:
        domain = request.host.split(":")[0].removeprefix("mta-sts.")
        self.requests.append(domain)
        if self.stall:
            await asyncio.sleep(3600)
        status, content_type, body = self.replies.get(
            domain, (200, "text/plain", self.policies.get(domain, "")))
        if domain not in self.replies and domain not in self.policies:
            status = 404
        data = body.encode() if isinstance(body, str) else body
        return web.Response(status=status, body=data, headers={
            "Content-Type": content_type, **self.headers.get(domain, {})})

    async def start(self) -> PolicyHost:
        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> PolicyHost:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    """A policy file as RFC 8461 3.2 writes it."""
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx),
             f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"
