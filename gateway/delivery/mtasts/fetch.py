"""Fetch a domain's MTA-STS policy over HTTPS (RFC 8461 3.3) with aiohttp.

`https://mta-sts.<domain>/.well-known/mta-sts.txt`, its certificate verified for that
name against `ca_file` (or the system store); only a 200 with `text/plain` counts,
redirects are not followed and HTTP caching is not used; the body is limited in size
and the whole request in time (64 KiB and one minute are the RFC's suggestions). The
policy host's address comes from the gateway's own resolver, like every other name.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.delivery.mtasts import StsPolicy
from gateway.delivery.mtasts.policy import PolicyError, parse_policy
from gateway.delivery.resolver import DnsFailure, DnsResolver, InvalidName

SIZE_LIMIT = 65536


class FetchError(Exception):
    """The policy could not be had; the text says why, for logs and reasons."""


class _GatewayDns(AbstractResolver):
    """aiohttp's name lookups through the gateway's DnsResolver."""

    def __init__(self, resolver: DnsResolver) -> None:
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            found = await self.resolver.addresses(host)
        except (DnsFailure, InvalidName) as e:
            raise OSError(str(e)) from None
        results: list[ResolveResult] = []
        for address in found.addresses:
            kind = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (socket.AF_UNSPEC, kind):
                results.append({"hostname": host, "host": address, "port": port,
                                "family": kind, "proto": 0, "flags": socket.AI_NUMERICHOST})
        if not results:
            raise OSError(f"{host} has no address")
        return results

    async def close(self) -> None:
        """Nothing to release: the DnsResolver belongs to the gateway."""


class PolicyFetcher:
    """Fetches and parses policies; one instance per configuration."""

    def __init__(self, resolver: DnsResolver, *, ca_file: Path | None = None, port: int = 443,
                 timeout: float = 60, size_limit: int = SIZE_LIMIT) -> None:
        self.resolver = resolver
        self.ca_file = ca_file
        self.port = port  # 443; tests run policy hosts on other ports
        self.timeout = timeout
        self.size_limit = size_limit
        self._context: ssl.SSLContext | None = None

    def url(self, domain: str) -> str:
        port = "" if self.port == 443 else f":{self.port}"
        return f"https://mta-sts.{domain}{port}/.well-known/mta-sts.txt"

    async def fetch(self, domain: str) -> StsPolicy:
        """The domain's current policy; FetchError saying why there is none."""
        if self._context is None:  # loading the system store takes a while: not on the loop
            self._context = await asyncio.to_thread(
                ssl.create_default_context, cafile=str(self.ca_file) if self.ca_file else None)
        url = self.url(domain)
        connector = aiohttp.TCPConnector(resolver=_GatewayDns(self.resolver),
                                         ssl=self._context, use_dns_cache=False)
        try:
            async with aiohttp.ClientSession(
                    connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                    headers={"User-Agent": "send-sikkert MTA-STS"}) as session, \
                    session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise FetchError(f"{url} answered HTTP {response.status}")
                if response.content_type != "text/plain":
                    raise FetchError(f"{url} is {response.content_type}, not text/plain")
                body = await self._read(response, url)
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            raise FetchError(f"{url} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientConnectorCertificateError as e:
            raise FetchError(f"the certificate of {url} is not valid: "
                             f"{e.certificate_error}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise FetchError(f"cannot fetch {url}: {str(e) or type(e).__name__}") from None
        try:
            return parse_policy(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise FetchError(f"{url} is not UTF-8 text") from None
        except PolicyError as e:
            raise FetchError(f"{url} is not a valid policy: {e}") from None

    async def _read(self, response: aiohttp.ClientResponse, url: str) -> bytes:
        body = bytearray()
        async for chunk in response.content.iter_chunked(8192):
            body += chunk
            if len(body) > self.size_limit:
                raise FetchError(f"{url} is larger than {self.size_limit} bytes")
        return bytes(body)
