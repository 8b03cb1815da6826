"""Look recipient certificates up in an LDAP directory, from the event loop, never blocking it.

The OCES-style lookup: a subtree search below `base_dn` with `filter`, in which `{address}`
becomes the address escaped per RFC 4515 §3, reading the configured attributes
(`userCertificate;binary`, RFC 4523 and RFC 4522; `userSMIMECertificate`, RFC 2798, whose
PKCS #7 values are unpacked into their certificates). Addresses that are not RFC 5321
mailboxes are refused (ValueError) before anything is sent. The protocol is RFC 4511;
ldaps://, StartTLS (RFC 4511 §4.14, RFC 4513 §3) and simple bind with a DN and password
(RFC 4513 §5.1.3) are supported, and the server certificate is always verified.
Connections (bonsai, on libldap) come from a small pool kept open between lookups; one the
server has dropped (restart, idle timeout) is replaced and the lookup retried once. Every
failure, including the whole lookup running past `timeout`, is a DirectoryUnavailable: the
recipient is `unknown`, never `unsafe`. Known limit: libldap does TLS handshakes on a
blocking socket, so a server that answers the StartTLS request and then hangs
mid-handshake stalls the process until it answers; ldaps:// is guarded against a hung
server (see _tls_answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bonsai
from bonsai.asyncio import AIOLDAPConnection
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.config import ConfigError, DirectoryConfig
from gateway.directory import DirectoryUnavailable
from gateway.directory.cache import LookupCache
from gateway.policy.address import normalise
from gateway.secret import read_secret

# RFC 5321 §4.1.2 Mailbox (RFC 6531: UTF-8 allowed), with the §4.5.3.1 size limits.
_FILTER_SPECIALS = frozenset("\\*()\0")

# While the server is silent, poll again at least this often (see _Connection).
_MAX_POLL_INTERVAL = 0.1
# How long a connect that its lookup gave up on may still finish in the background.
_REAP_AFTER = 60.0
_REAPERS: set[asyncio.Task[None]] = set()  # running reapers, referenced until they end


def escape_filter_value(value: str) -> str:
    r"""The value as an RFC 4515 assertion value: \ * ( ) NUL and non-ASCII octets as \XX.

    (bonsai.escape_filter_exp writes NUL as "\0", which is not a valid escape.)
    """
    return "".join(
        "".join(f"\\{octet:02x}" for octet in char.encode())
        if char in _FILTER_SPECIALS or not char.isascii() else char
        for char in value
    )


def read_password(config: DirectoryConfig, config_file: str | Path = "") -> str | None:
    """The bind password from `bind_password_env` or `bind_password_file`; None when anonymous."""
    where = str(config_file) or "configuration"
    if not config.bind_dn:
        return None
    password = read_secret(where, config.bind_password_file, config.bind_password_env,
                           file_key="directory.bind_password_file",
                           env_key="directory.bind_password_env")
    if password is None:
        raise ConfigError(where, "directory.bind_dn",
                          "needs bind_password_file or bind_password_env")
    # RFC 4513 §5.1.2: a DN with an empty password is an unauthenticated (anonymous) bind.
    if not password:
        raise ConfigError(where, "directory.bind_dn", "the bind password is empty")
    return password


class _Connection(AIOLDAPConnection):
    """bonsai's asyncio connection, sleeping until its socket is readable.

    bonsai's own waits for "readable or writable", which a connected socket always is, so it
    spins the loop at full CPU while the server is slow; on cancellation it leaves its
    callbacks on the loop; and a connect given up half-way keeps its LDAP handle and sockets
    forever, since close() does nothing before the bind is done. This one waits for
    readability with a short timed look-again (for the steps that wait on writability: an
    asynchronous TCP connect, data already buffered inside TLS), always unregisters itself,
    and lets an abandoned connect end in the background, then frees it.
    """

    def _evaluate(self, msg_id: int, timeout: float | None = None) -> Any:
        return self._result(msg_id, timeout)

    async def _result(self, msg_id: int, limit: float | None) -> Any:
        try:
            return await self._wait(msg_id, limit)
        except (asyncio.CancelledError, TimeoutError):
            if self.closed:  # still connecting
                task = asyncio.get_running_loop().create_task(self._reap(msg_id))
                _REAPERS.add(task)
                task.add_done_callback(_REAPERS.discard)
            raise

    async def _wait(self, msg_id: int, limit: float | None) -> Any:
        loop = asyncio.get_running_loop()
        interval = 0.001
        async with asyncio.timeout(limit):
            # Skip AIOLDAPConnection's awaitable get_result: the C one polls without waiting.
            while (result := super(AIOLDAPConnection, self).get_result(msg_id)) is None:
                await self._readable(loop, interval)
                interval = min(interval * 2, _MAX_POLL_INTERVAL)
        return result

    async def _readable(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        fd = self.fileno()
        if fd < 0:
            await asyncio.sleep(interval)
            return
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        timer = loop.call_later(interval, wake)
        try:
            await ready
        finally:
            timer.cancel()
            loop.remove_reader(fd)

    async def _reap(self, msg_id: int) -> None:
        """Let an abandoned connect end (or give it _REAP_AFTER), then release it."""
        try:
            await self._wait(msg_id, _REAP_AFTER)
        except TimeoutError:
            # Long past initialisation, so the LDAP handle exists: abandoning the connect
            # drops bonsai's reference to it, and the handle and its socket are freed.
            with contextlib.suppress(bonsai.LDAPError):
                self.abandon(msg_id)
        except bonsai.LDAPError:
            pass  # the connect failed, and bonsai freed it
        else:
            _close(self)


def _close(conn: _Connection) -> None:
    with contextlib.suppress(bonsai.LDAPError):  # the server may have dropped it already
        conn.close()


def _unpack(value: bytes) -> list[bytes]:
    """A bare DER certificate as it is; a PKCS #7 SignedData as the certificates inside."""
    try:
        return [cert.public_bytes(Encoding.DER)
                for cert in pkcs7.load_der_pkcs7_certificates(value)]
    except ValueError:
        return [value]


class _StaleConnection(Exception):
    """A pooled connection turned out dead: worth one retry on a fresh connection."""


class _MissingBase(Exception):
    """The base DN is not there (or not readable) on a freshly opened connection."""


class LdapSource:
    """Certificates published in an LDAP directory, through a pool of connections and a cache."""

    backend = "ldap"

    def __init__(
        self,
        config: DirectoryConfig,
        *,
        config_file: str | Path = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = bonsai.LDAPURL(config.url)
        self._tls = config.starttls or self._url.scheme == "ldaps"
        if config.starttls and self._url.scheme == "ldaps":
            raise ConfigError(str(config_file) or "configuration", "directory.starttls",
                              "StartTLS cannot be used with an ldaps:// URL (already TLS)")
        self._config = config
        self._cache = LookupCache(config.cache_ttl, config.negative_cache_ttl,
                                  config.cache_size, clock=clock)
        # Each attribute is asked for as configured and without options: RFC 4522 servers
        # such as OpenLDAP know ";binary" only for certificate syntaxes and silently skip
        # "userSMIMECertificate;binary", others answer "userCertificate" without it.
        self._wanted = {name.split(";")[0].lower() for name in config.attributes}
        names = [*config.attributes, *(name.split(";")[0] for name in config.attributes)]
        self._attributes = list({name.lower(): name for name in names}.values())  # unique
        self._client = self._new_client(read_password(config, config_file))
        self._base_search = (config.base_dn, bonsai.LDAPSearchScope.BASE, "(objectClass=*)",
                             ["1.1"])
        self._missing_base = (f"LDAP {config.url}: base DN {config.base_dn!r} does not exist "
                              "or cannot be read")
        self._slots = asyncio.Semaphore(config.pool_size)
        self._idle: list[_Connection] = []
        self._generation = 0  # bumped when the connections made so far must not be reused

    def _new_client(self, password: str | None) -> bonsai.LDAPClient:
        config = self._config
        client = bonsai.LDAPClient(config.url, tls=config.starttls)
        client.set_async_connection_class(_Connection)
        client.set_raw_attributes(self._attributes)  # values as bytes
        if self._tls:
            client.set_cert_policy("demand")
            if config.ca_file:
                client.set_ca_cert(str(config.ca_file))
        if config.bind_dn:
            client.set_credentials("SIMPLE", user=config.bind_dn, password=password)
        return client

    async def lookup(self, address: str) -> list[bytes]:
        """Every DER certificate published for this exact address ([] when none)."""
        address = normalise(address)  # nothing unvalidated ever reaches a filter
        cached = self._cache.get(address)
        if cached is not None:
            return cached
        filter_exp = self._config.filter.replace("{address}", escape_filter_value(address))
        entries = await self._search(self._config.base_dn, bonsai.LDAPSearchScope.SUBTREE,
                                     filter_exp, self._attributes)
        certs: dict[bytes, None] = {}  # ordered, without duplicates
        for entry in entries:
            for name, values in entry.items():
                if name.split(";")[0].lower() in self._wanted:
                    for value in values:
                        if isinstance(value, bytes):
                            certs.update(dict.fromkeys(_unpack(value)))
        result = list(certs)
        self._cache.put(address, result)
        return result

    async def ping(self) -> None:
        """Read the base entry (no attributes); DirectoryUnavailable when that fails."""
        if not await self._search(*self._base_search):
            raise DirectoryUnavailable(self._missing_base)

    async def close(self) -> None:
        """Close the pooled connections (a later lookup would open new ones)."""
        self._drop_connections()

    def _drop_connections(self) -> None:
        self._generation += 1
        idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)

    async def _search(self, base: str, scope: bonsai.LDAPSearchScope, filter_exp: str,
                      attributes: list[str]) -> list[bonsai.LDAPEntry]:
        """One search on a pooled connection within `timeout`; failures as DirectoryUnavailable."""
        where, timeout = f"LDAP {self._config.url}", self._config.timeout
        try:
            async with asyncio.timeout(timeout), self._slots:
                try:
                    return await self._search_once(base, scope, filter_exp, attributes,
                                                   reuse=True)
                except _StaleConnection:
                    # The server dropped a pooled connection (restart, idle timeout), and
                    # its siblings with it. Start afresh, once.
                    self._drop_connections()
                    return await self._search_once(base, scope, filter_exp, attributes,
                                                   reuse=False)
        except TimeoutError:
            raise DirectoryUnavailable(f"{where}: no answer within {timeout:g} s") from None
        except bonsai.AuthenticationError as e:
            raise DirectoryUnavailable(
                f"{where}: bind as {self._config.bind_dn!r} refused: {_reason(e)}") from None
        except _MissingBase:
            raise DirectoryUnavailable(self._missing_base) from None
        except bonsai.ConnectionError as e:
            hint = " (or TLS failed: is ca_file the server certificate's CA?)" if self._tls else ""
            raise DirectoryUnavailable(f"{where}: {_reason(e)}{hint}") from None
        except bonsai.LDAPError as e:
            raise DirectoryUnavailable(f"{where}: {_reason(e)}") from None
        except OSError as e:  # from the ldaps:// liveness check, ssl.SSLError included
            raise DirectoryUnavailable(f"{where}: cannot connect: {e}") from None

    async def _search_once(self, base: str, scope: bonsai.LDAPSearchScope, filter_exp: str,
                           attributes: list[str], *, reuse: bool) -> list[bonsai.LDAPEntry]:
        generation = self._generation
        pooled = reuse and bool(self._idle)
        conn = self._idle.pop() if pooled else await self._connect()
        try:
            entries = await conn.search(base, scope, filter_exp, attributes)
        except bonsai.ConnectionError as e:
            _close(conn)
            if pooled:
                raise _StaleConnection from e
            raise
        except BaseException:
            _close(conn)
            raise
        if generation == self._generation:
            self._idle.append(conn)
        else:
            _close(conn)
        return entries

    async def _connect(self) -> _Connection:
        if self._url.scheme == "ldaps":
            await self._tls_answers()
        # Awaiting it connects, does StartTLS and binds; a failed connect bonsai frees
        # itself, one cancelled half-way _Connection finishes in the background.
        conn = await self._client.connect(is_async=True)
        try:
            # bonsai answers a search below a missing base with [] (noSuchObject hidden),
            # which would make everyone `unsafe`: check the base once per connection.
            if not await conn.search(*self._base_search):
                raise _MissingBase
        except BaseException:
            _close(conn)
            raise
        return conn

    async def _tls_answers(self) -> None:
        """Complete one TLS handshake with the ldaps:// server, as a liveness check.

        libldap 2.5 does the ldaps:// handshake on a blocking socket while holding the GIL:
        a server that accepts connections but does not answer (hung, stopped) would freeze
        the whole process. Going first with asyncio, which can give up, leaves that only to
        a server dying in the milliseconds between the two. libldap verifies the certificate
        on the real connection; nothing is sent on this one.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _, writer = await asyncio.open_connection(self._url.host, self._url.port, ssl=context)
        writer.transport.abort()


def _reason(error: bonsai.LDAPError) -> str:
    """bonsai's message without its code suffix, e.g. "Can't contact LDAP server"."""
    text = str(error.args[0]) if error.args else ""
    text = re.sub(r"\s*\(unknown error code\)$", "", text).rstrip(". ")
    return text or type(error).__name__
