"""Load and validate the TOML configuration into frozen dataclasses.

Every problem becomes one ConfigError naming the file and the dotted key, so that
`send-sikkert serve` and `config check` can stop with a single clear line. Relative
paths are resolved against the configuration file's folder; unknown keys are errors.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("policies/gateway.toml")
CONFIG_ENV = "SEND_SIKKERT_CONFIG"


class ConfigError(Exception):
    """A configuration problem: file, dotted key and what is wrong with it."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SmtpTls:
    cert: Path
    key: Path
    require: bool = False


@dataclass(frozen=True)
class SmtpConfig:
    listen: tuple[HostPort, ...]
    hostname: str
    relay_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    max_message_size: int
    tls: SmtpTls | None = None


@dataclass(frozen=True)
class HttpConfig:
    listen: HostPort | None


@dataclass(frozen=True)
class SpoolConfig:
    dir: Path


@dataclass(frozen=True)
class QueueConfig:
    retry_min: float = 60
    retry_max: float = 3600
    delay_warning: float = 14400
    max_age: float = 432000
    concurrency: int = 20


@dataclass(frozen=True)
class OrganisationConfig:
    name: str
    internal_domains: tuple[str, ...]


@dataclass(frozen=True)
class RoutesConfig:
    internal: str
    default: str
    transport: dict[str, str] = field(default_factory=dict)
    mx_port: int = 25  # like Postfix smtp_tcp_port: the port `mx` routes connect to


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[HostPort, ...] = ()


@dataclass(frozen=True)
class TagsConfig:
    header: str
    subject: re.Pattern[str]


@dataclass(frozen=True)
class SepoConfig:
    list: Path
    ca_file: Path | None
    min_tls: str = "1.2"


@dataclass(frozen=True)
class DirectoryConfig:
    backend: str | None  # None: no certificate directory, nobody is `smime`
    path: Path | None = None
    url: str = "ldap://127.0.0.1:3389"
    base_dn: str = "c=DK"
    filter: str = "(mail={address})"
    attributes: tuple[str, ...] = ("userCertificate;binary", "userSMIMECertificate;binary")
    trust_anchors: tuple[str, ...] = ()  # glob patterns, already resolved to absolute
    intermediates: tuple[str, ...] = ()  # glob patterns for extra CA certificates
    crls: tuple[str, ...] = ()  # file globs or http(s) URLs
    revocation: str = "soft-fail"  # or "hard-fail": unknown revocation status -> `unknown`
    cache_ttl: float = 3600
    negative_cache_ttl: float = 300
    cache_size: int = 10000
    timeout: float = 5
    bind_dn: str = ""
    bind_password_file: Path | None = None
    bind_password_env: str = ""
    pool_size: int = 4
    starttls: bool = False
    ca_file: Path | None = None


@dataclass(frozen=True)
class DepartmentConfig:
    id: str
    name: str
    mailbox: str
    cert: Path
    key: Path
    stamp: str
    senders: tuple[str, ...]
    default_for: tuple[str, ...] = ()
    key_passphrase_env: str = ""


@dataclass(frozen=True)
class Config:
    path: Path
    smtp: SmtpConfig
    http: HttpConfig
    spool: SpoolConfig
    queue: QueueConfig
    organisation: OrganisationConfig
    routes: RoutesConfig
    dns: DnsConfig
    tags: TagsConfig
    sepo: SepoConfig
    directory: DirectoryConfig
    departments: tuple[DepartmentConfig, ...]


def config_path(arg: str | None) -> Path:
    """The file `--config`, `$SEND_SIKKERT_CONFIG` or the demo default names."""
    return Path(arg or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


class _Reader:
    """Typed access to one TOML table, recording which keys were read."""

    def __init__(self, file: Path, prefix: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(file, prefix, "must be a table")
        self.file, self.prefix, self.table = file, prefix, table
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), message)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.table:
            if default is ...:
                raise self.error(name, "is required")
            return default
        value = self.table[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            raise self.error(name, f"must be {_kind_name(kind)}, not a boolean")
        if not isinstance(value, kind):
            raise self.error(name, f"must be {_kind_name(kind)}")
        return value

    def strings(self, name: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(name, list, default)
        if not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be a list of strings")
        return tuple(value)

    def positive(self, name: str, default: Any = ...) -> float:
        value = self.get(name, float, default)
        if value <= 0:
            raise self.error(name, "must be greater than 0")
        return value

    def path(self, name: str, default: Any = ...) -> Path | None:
        value = self.get(name, str, default)
        if not value:
            return None
        return resolve(self.file, value)

    def table_of(self, name: str, required: bool = True) -> _Reader:
        self.seen.add(name)
        if name not in self.table:
            if required:
                raise self.error(name, "section is missing")
            return _Reader(self.file, self.key(name), {})
        return _Reader(self.file, self.key(name), self.table[name])

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def resolve(config_file: Path, value: str) -> Path:
    """A path relative to the configuration file's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (config_file.parent / path).resolve()


def parse_hostport(text: str, default_port: int | None = None) -> HostPort:
    """`host:port` or `[v6]:port`; a bare host only when a default port is given."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]\s]+)(?::(\d+))?", text)
    if m is None:
        raise ValueError(f"{text!r} is not host:port")
    host, port = m[1] or m[3], m[2] or m[4]
    if port is None:
        if default_port is None:
            raise ValueError(f"{text!r} needs a port (host:port)")
        port = str(default_port)
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range")
    return HostPort(host, int(port))


ROUTE_RE = re.compile(r"smtp://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(\d+)|mx|file:.+")


def check_route(r: _Reader, name: str, value: str) -> str:
    if not ROUTE_RE.fullmatch(value):
        raise r.error(name, f"{value!r} is not a route (smtp://host:port, mx or file:DIR)")
    if value.startswith("file:"):
        return "file:" + str(resolve(r.file, value[5:]))
    return value


def load(path: Path) -> Config:
    """Read and validate one configuration file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "", "configuration file not found") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    path = path.resolve()
    top = _Reader(path, "", raw)
    config = Config(
        path=path,
        smtp=_smtp(top.table_of("smtp")),
        http=_http(top.table_of("http", required=False)),
        spool=_spool(top.table_of("spool")),
        queue=_queue(top.table_of("queue", required=False)),
        organisation=_organisation(top.table_of("organisation")),
        routes=_routes(top.table_of("routes")),
        dns=_dns(top.table_of("dns", required=False)),
        tags=_tags(top.table_of("tags", required=False)),
        sepo=_sepo(top.table_of("sepo")),
        directory=_directory(top.table_of("directory", required=False)),
        departments=_departments(path, top.get("departments", list, [])),
    )
    top.finish()
    return config


def _smtp(r: _Reader) -> SmtpConfig:
    listen = []
    for item in r.strings("listen"):
        try:
            listen.append(parse_hostport(item))
        except ValueError as e:
            raise r.error("listen", str(e)) from None
    if not listen:
        raise r.error("listen", "needs at least one host:port")
    networks = []
    for item in r.strings("relay_networks", ["127.0.0.0/8", "::1/128"]):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise r.error("relay_networks", f"{item!r} is not a network") from None
    size = r.get("max_message_size", int, 52428800)
    if size <= 0:
        raise r.error("max_message_size", "must be greater than 0")
    tls = None
    if "tls" in r.table:
        t = r.table_of("tls")
        tls = SmtpTls(cert=t.path("cert"), key=t.path("key"), require=t.get("require", bool, False))
        if tls.cert is None or tls.key is None:
            raise t.error("cert", "cert and key are both required for inbound STARTTLS")
        t.finish()
    hostname = r.get("hostname", str)
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", hostname):
        raise r.error("hostname", f"{hostname!r} is not a host name")
    r.finish()
    return SmtpConfig(tuple(listen), hostname, tuple(networks), size, tls)


def _http(r: _Reader) -> HttpConfig:
    value = r.get("listen", str, "")
    r.finish()
    if not value:
        return HttpConfig(None)
    try:
        return HttpConfig(parse_hostport(value))
    except ValueError as e:
        raise r.error("listen", str(e)) from None


def _spool(r: _Reader) -> SpoolConfig:
    spool = SpoolConfig(r.path("dir"))
    if spool.dir is None:
        raise r.error("dir", "must name a folder")
    r.finish()
    return spool


def _queue(r: _Reader) -> QueueConfig:
    q = QueueConfig(
        retry_min=r.positive("retry_min", 60.0),
        retry_max=r.positive("retry_max", 3600.0),
        delay_warning=r.positive("delay_warning", 14400.0),
        max_age=r.positive("max_age", 432000.0),
        concurrency=int(r.positive("concurrency", 20)),
    )
    if q.retry_max < q.retry_min:
        raise r.error("retry_max", "must not be smaller than retry_min")
    r.finish()
    return q


def _organisation(r: _Reader) -> OrganisationConfig:
    org = OrganisationConfig(
        name=r.get("name", str),
        internal_domains=tuple(d.lower() for d in r.strings("internal_domains")),
    )
    r.finish()
    return org


def _routes(r: _Reader) -> RoutesConfig:
    internal = check_route(r, "internal", r.get("internal", str))
    default = check_route(r, "default", r.get("default", str, "mx"))
    t = r.table_of("transport", required=False)
    transport = {}
    for domain in list(t.table):
        transport[domain.lower()] = check_route(t, domain, t.get(domain, str))
    t.finish()
    mx_port = r.get("mx_port", int, 25)
    if not 0 < mx_port < 65536:
        raise r.error("mx_port", "must be a port number")
    r.finish()
    return RoutesConfig(internal, default, transport, mx_port)


def _dns(r: _Reader) -> DnsConfig:
    servers = []
    for item in r.strings("nameservers", []):
        try:
            servers.append(parse_hostport(item, default_port=53))
        except ValueError as e:
            raise r.error("nameservers", str(e)) from None
    r.finish()
    return DnsConfig(tuple(servers))


def _tags(r: _Reader) -> TagsConfig:
    header = r.get("header", str, "X-Send-Sikkert")
    pattern = r.get("subject", str, r"(?P<keyword>[A-Za-z0-9._-]+)%%")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise r.error("subject", f"not a valid regular expression: {e}") from None
    if "keyword" not in compiled.groupindex:
        raise r.error("subject", "needs a named group (?P<keyword>...)")
    r.finish()
    return TagsConfig(header, compiled)


def _sepo(r: _Reader) -> SepoConfig:
    sepo = SepoConfig(
        list=r.path("list"),
        ca_file=r.path("ca_file", ""),
        min_tls=r.get("min_tls", str, "1.2"),
    )
    if sepo.list is None:
        raise r.error("list", "must name the SEPO member list file")
    if sepo.min_tls not in ("1.2", "1.3"):
        raise r.error("min_tls", 'must be "1.2" or "1.3"')
    r.finish()
    return sepo


def _globs(r: _Reader, name: str) -> tuple[str, ...]:
    return tuple(
        item if re.match(r"https?://", item) else str(resolve(r.file, item))
        for item in r.strings(name, [])
    )


def _directory(r: _Reader) -> DirectoryConfig:
    if not r.table:
        return DirectoryConfig(backend=None)
    backend = r.get("backend", str, "files")
    if backend not in ("files", "ldap"):
        raise r.error("backend", 'must be "files" or "ldap"')
    d = DirectoryConfig(
        backend=backend,
        path=r.path("path", ""),
        url=r.get("url", str, DirectoryConfig.url),
        base_dn=r.get("base_dn", str, DirectoryConfig.base_dn),
        filter=r.get("filter", str, DirectoryConfig.filter),
        attributes=r.strings("attributes", list(DirectoryConfig.attributes)),
        trust_anchors=_globs(r, "trust_anchors"),
        intermediates=_globs(r, "intermediates"),
        crls=_globs(r, "crls"),
        revocation=r.get("revocation", str, "soft-fail"),
        cache_ttl=r.get("cache_ttl", float, 3600.0),
        negative_cache_ttl=r.get("negative_cache_ttl", float, 300.0),
        cache_size=r.get("cache_size", int, 10000),
        timeout=r.positive("timeout", 5.0),
        bind_dn=r.get("bind_dn", str, ""),
        bind_password_file=r.path("bind_password_file", ""),
        bind_password_env=r.get("bind_password_env", str, ""),
        pool_size=r.get("pool_size", int, 4),
        starttls=r.get("starttls", bool, False),
        ca_file=r.path("ca_file", ""),
    )
    if d.revocation not in ("soft-fail", "hard-fail"):
        raise r.error("revocation", 'must be "soft-fail" or "hard-fail"')
    if backend == "files" and d.path is None:
        raise r.error("path", 'is required with backend = "files"')
    if backend == "ldap":
        if not re.match(r"ldaps?://", d.url):
            raise r.error("url", "must start with ldap:// or ldaps://")
        if "{address}" not in d.filter:
            raise r.error("filter", "must contain {address}")
        if not d.attributes:
            raise r.error("attributes", "needs at least one attribute")
    if not d.trust_anchors:
        raise r.error("trust_anchors", "needs at least one trust anchor for recipient certificates")
    for name in ("cache_ttl", "negative_cache_ttl"):
        if getattr(d, name) < 0:
            raise r.error(name, "must not be negative")
    if d.cache_size < 0 or d.pool_size < 1:
        raise r.error("cache_size" if d.cache_size < 0 else "pool_size", "out of range")
    r.finish()
    return d


def _departments(file: Path, items: list[Any]) -> tuple[DepartmentConfig, ...]:
    result = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        r = _Reader(file, f"departments[{i}]", item)
        dep = DepartmentConfig(
            id=r.get("id", str),
            name=r.get("name", str),
            mailbox=r.get("mailbox", str).lower(),
            cert=r.path("cert"),
            key=r.path("key"),
            stamp=r.get("stamp", str, ""),
            senders=tuple(s.lower() for s in r.strings("senders")),
            default_for=tuple(s.lower() for s in r.strings("default_for", [])),
            key_passphrase_env=r.get("key_passphrase_env", str, ""),
        )
        if not re.fullmatch(r"[A-Za-z0-9._-]+", dep.id):
            raise r.error("id", "may hold only letters, digits, '.', '_' and '-'")
        if dep.id.lower() in seen:
            raise r.error("id", f"{dep.id!r} is used by two departments")
        seen.add(dep.id.lower())
        if "@" not in dep.mailbox:
            raise r.error("mailbox", "must be an e-mail address")
        if dep.cert is None or dep.key is None:
            raise r.error("cert" if dep.cert is None else "key", "must name a file")
        r.finish()
        result.append(dep)
    return tuple(result)
