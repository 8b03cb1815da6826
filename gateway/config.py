"""Load and validate the TOML configuration into frozen pydantic models.

Every problem becomes one ConfigError naming the file and the dotted key, so that
`send-sikkert serve` and `config check` can stop with a single clear line (CONTRACT
"Command line"). Relative paths are resolved against the configuration file's folder;
unknown keys are errors. The models say what each section holds; the validators below
them only say what TOML's types cannot.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.types import Strict

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


def config_path(arg: str | None) -> Path:
    """The file `--config`, `$SEND_SIKKERT_CONFIG` or the demo default names."""
    return Path(arg or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


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


class FieldProblem(ValueError):
    """A problem a section's validator finds with one of its keys, named by `field`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --- value types: TOML's types are kept strict (a string is never a number) ---------------

Str = StrictStr
Bool = StrictBool
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
Port = Annotated[int, Strict(), Field(gt=0, lt=65536)]
Seconds = Annotated[float, Strict(), Field(gt=0)]
NonNegative = Annotated[float, Strict(), Field(ge=0)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _base(info: ValidationInfo) -> Path | None:
    return (info.context or {}).get("file")


def _path(value: Any, info: ValidationInfo) -> Path | None:
    """A file or folder named relative to the configuration file; "" means none."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string naming a file or folder")
    if not value:
        return None
    base = _base(info)
    return resolve(base, value) if base else Path(value)


def _required_path(value: Any, info: ValidationInfo) -> Path:
    path = _path(value, info)
    if path is None:
        raise ValueError("must name a file or folder")
    return path


def _glob(value: Any, info: ValidationInfo) -> str:
    """A glob pattern made absolute, or an http(s) URL (CRLs) kept as it is."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if re.match(r"https?://", value):
        return value
    base = _base(info)
    return str(resolve(base, value)) if base else value


def _hostport(value: Any) -> HostPort:
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string host:port")
    return parse_hostport(value)


def _nameserver(value: Any) -> HostPort:
    if isinstance(value, HostPort):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string host or host:port")
    return parse_hostport(value, default_port=53)


def _optional_hostport(value: Any) -> HostPort | None:
    return None if value == "" or value is None else _hostport(value)


def _network(value: Any) -> Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a network") from None


def _pattern(value: Any) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a regular expression (a string)")
    try:
        return re.compile(value)
    except re.error as e:
        raise ValueError(f"not a valid regular expression: {e}") from None


_ROUTE = re.compile(r"smtp://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):(\d+)|mx|file:.+")


def _route(value: Any, info: ValidationInfo) -> str:
    """A route (CONTRACT "Route forms"), a `file:` folder made absolute."""
    if not isinstance(value, str) or not _ROUTE.fullmatch(value):
        raise ValueError(f"{value!r} is not a route (smtp://host:port, mx or file:DIR)")
    base = _base(info)
    if value.startswith("file:") and base:
        return "file:" + str(resolve(base, value[5:]))
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


Listen = Annotated[HostPort, PlainValidator(_hostport)]
NameServer = Annotated[HostPort, PlainValidator(_nameserver)]
OptionalListen = Annotated[HostPort | None, PlainValidator(_optional_hostport)]
Net = Annotated[Network, PlainValidator(_network)]
FilePath = Annotated[Path, PlainValidator(_required_path)]
OptionalPath = Annotated[Path | None, PlainValidator(_path)]
Glob = Annotated[str, PlainValidator(_glob)]
Route = Annotated[str, PlainValidator(_route)]
Pattern = Annotated[re.Pattern[str], PlainValidator(_pattern)]
LowerStr = Annotated[StrictStr, BeforeValidator(_lower)]


class Section(BaseModel):
    """A TOML table: frozen once loaded, and no key the gateway does not know."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


# --- the sections, in the order of CONTRACT "Configuration" -------------------------------

class SmtpTls(Section):
    cert: FilePath
    key: FilePath
    require: Bool = False


class SmtpConfig(Section):
    listen: Annotated[tuple[Listen, ...], Field(min_length=1)]
    hostname: Str
    relay_networks: tuple[Net, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                       ipaddress.ip_network("::1/128"))
    max_message_size: PositiveInt = 52428800
    tls: SmtpTls | None = None
    max_connections: PositiveInt = 1000
    max_connections_per_client: PositiveInt = 50
    timeout: Seconds = 300.0  # idle seconds before `421 4.4.2`
    proxy_protocol: Bool = False  # read a PROXY header (v1 or v2) from trusted_proxies
    trusted_proxies: tuple[Net, ...] = ()

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
            raise ValueError(f"{value!r} is not a host name")
        return value

    @model_validator(mode="after")
    def _proxies(self) -> SmtpConfig:
        if self.proxy_protocol and not self.trusted_proxies:
            raise FieldProblem("trusted_proxies", "proxy_protocol needs the load balancers "
                               "whose PROXY header is believed")
        return self


class HttpTls(Section):
    cert: FilePath
    key: FilePath


class HttpConfig(Section):
    listen: OptionalListen = None  # no HTTP listener without it
    tls: HttpTls | None = None


class SpoolConfig(Section):
    dir: FilePath
    # Worker processes sharing the SMTP port, each with its own part of the spool;
    # 0: one per CPU.
    workers: Annotated[int, Strict(), Field(ge=0, le=256)] = 0
    # How a commit round makes new messages durable (gateway/spool/durable.py).
    sync: Literal["filesystem", "files"] = "filesystem"


class QueueConfig(Section):
    retry_min: Seconds = 60.0
    retry_max: Seconds = 3600.0
    delay_warning: Seconds = 14400.0
    max_age: Seconds = 432000.0
    concurrency: PositiveInt = 20  # messages delivered at the same time

    @model_validator(mode="after")
    def _order(self) -> QueueConfig:
        if self.retry_max < self.retry_min:
            raise FieldProblem("retry_max", "must not be smaller than retry_min")
        return self


class OrganisationConfig(Section):
    name: Str
    internal_domains: tuple[LowerStr, ...]


class RoutesConfig(Section):
    internal: Route
    default: Route = "mx"
    transport: dict[LowerStr, Route] = Field(default_factory=dict)
    mx_port: Port = 25  # like Postfix smtp_tcp_port: the port `mx` routes connect to


class DnsConfig(Section):
    nameservers: tuple[NameServer, ...] = ()
    timeout: Seconds = 5.0  # per lookup, all servers and retries; past it: unknown / 4.4.3


class TagsConfig(Section):
    header: Str = "X-Send-Sikkert"
    subject: Pattern = re.compile(r"(?P<keyword>[A-Za-z0-9._-]+)%%")

    @field_validator("subject")
    @classmethod
    def _keyword(cls, value: re.Pattern[str]) -> re.Pattern[str]:
        if "keyword" not in value.groupindex:
            raise ValueError("needs a named group (?P<keyword>...)")
        return value


class SepoConfig(Section):
    list: FilePath
    ca_file: OptionalPath = None
    min_tls: Literal["1.2", "1.3"] = "1.2"
    watch_interval: NonNegative = 10.0  # seconds between looks at the list file; 0: SIGHUP only


class DirectoryConfig(Section):
    backend: Literal["files", "ldap"] | None  # None: no certificate directory, nobody is smime
    path: OptionalPath = None
    url: Str = "ldap://127.0.0.1:3389"
    base_dn: Str = "c=DK"
    filter: Str = "(mail={address})"
    attributes: tuple[Str, ...] = ("userCertificate;binary", "userSMIMECertificate;binary")
    trust_anchors: tuple[Glob, ...] = ()
    intermediates: tuple[Glob, ...] = ()  # extra CA certificates for path building
    crls: tuple[Glob, ...] = ()  # file globs or http(s) URLs
    revocation: Literal["soft-fail", "hard-fail"] = "soft-fail"
    cache_ttl: NonNegative = 3600.0
    negative_cache_ttl: NonNegative = 300.0
    cache_size: Annotated[int, Strict(), Field(ge=0)] = 10000
    timeout: Seconds = 5.0
    bind_dn: Str = ""
    bind_password_file: OptionalPath = None
    bind_password_env: Str = ""
    pool_size: PositiveInt = 4
    starttls: Bool = False
    ca_file: OptionalPath = None

    @model_validator(mode="before")
    @classmethod
    def _default_backend(cls, data: Any) -> Any:
        # A [directory] table without `backend` is the files backend; no table, none.
        if isinstance(data, dict) and data and "backend" not in data:
            return {**data, "backend": "files"}
        return data

    @model_validator(mode="after")
    def _complete(self) -> DirectoryConfig:
        if self.backend == "files" and self.path is None:
            raise FieldProblem("path", 'is required with backend = "files"')
        if self.backend == "ldap":
            if not re.match(r"ldaps?://", self.url):
                raise FieldProblem("url", "must start with ldap:// or ldaps://")
            if "{address}" not in self.filter:
                raise FieldProblem("filter", "must contain {address}")
            if not self.attributes:
                raise FieldProblem("attributes", "needs at least one attribute")
        if self.backend is not None and not self.trust_anchors:
            raise FieldProblem("trust_anchors", "needs at least one trust anchor for recipient "
                               "certificates")
        return self


class TransportSecurityConfig(Section):
    dane: Bool = False  # RFC 7672: DNSSEC-secure TLSA records on the recipient's MX hosts
    mta_sts: Bool = False  # RFC 8461: an MTA-STS policy in enforce mode
    ca_file: OptionalPath = None  # for MTA-STS policy hosts and MX certificates
    policy_timeout: Seconds = 10.0  # one MTA-STS policy fetch over HTTPS, in seconds
    policy_port: Port = 443  # of the MTA-STS policy hosts (RFC 8461: 443); for tests


class ClusterConfig(Section):
    database: Str = ""  # PostgreSQL URL; "" = one node, files only
    database_password_file: OptionalPath = None
    database_password_env: Str = ""
    node: Str = Field(default="", validate_default=True)  # default: the host name

    @field_validator("database")
    @classmethod
    def _database(cls, value: str) -> str:
        if not value:
            return value
        url = urlsplit(value)
        if url.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        if url.password:
            raise ValueError("must not hold the password: use database_password_file or "
                             "database_password_env")
        return value

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        return value or socket.gethostname()

    @model_validator(mode="after")
    def _one_password(self) -> ClusterConfig:
        if self.database_password_file and self.database_password_env:
            raise FieldProblem("database_password_env", "give database_password_file or "
                               "database_password_env, not both")
        return self


class DlpConfig(Section):
    cpr: Literal["secure", "block", "warn", "off"] = "secure"
    # Bounds on one message's scan (README "Data-loss prevention"): past one, the rest is
    # left unread, logged and counted in sendsikkert_dlp_incomplete_total.
    max_bytes: PositiveInt = 100 * 1024 * 1024  # decoded content read, in all
    max_parts: PositiveInt = 1000  # MIME parts and archive members
    max_depth: PositiveInt = 10  # nesting of multiparts, attached messages, archives
    max_pdf_pages: PositiveInt = 2000  # per PDF
    workers: PositiveInt = 1  # processes scanning messages larger than 256 KiB


class InboundConfig(Section):
    enabled: Bool = False  # clients outside relay_networks may send to internal recipients
    decrypt: Bool = True  # decrypt S/MIME mail encrypted to a department certificate
    harvest: OptionalPath = None  # store of learnt certificates; "" (the default) = off
    reply_map: OptionalPath = None  # who sent each secure mail, for replies = "department"
    reply_retention: Seconds = 7776000.0  # seconds a reply is still routed to the person (90 days)


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class AddinConfig(Section):
    public_url: Str = ""  # https URL at which Outlook reaches the HTTP listener; "" = no add-in
    id: Str = ""  # the add-in's GUID, stable across upgrades

    @field_validator("public_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if value and not re.fullmatch(r"https://[^/\s?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an https:// URL (Outlook loads add-ins only over https)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _id(self) -> AddinConfig:
        if self.public_url and not _GUID.fullmatch(self.id):
            raise FieldProblem("id", "must be the add-in's GUID (e.g. from `uuidgen`) when "
                               "public_url is set")
        return self


class DepartmentConfig(Section):
    id: Str  # also the subject keyword: "<id>%%"
    name: Str
    mailbox: LowerStr  # the department's secure mailbox: signer and From
    cert: FilePath
    key: FilePath
    stamp: Str = ""
    senders: tuple[LowerStr, ...]  # who may send through this department
    default_for: tuple[LowerStr, ...] = ()
    key_passphrase_env: Str = ""
    replies: Literal["person", "department"] = "person"  # Reply-To of S/MIME mail
    reply_copy: Bool = False  # replies = "department": a routed reply also reaches the mailbox

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", value):
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("mailbox")
    @classmethod
    def _mailbox(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("must be an e-mail address")
        return value


class Config(Section):
    path: Path
    smtp: SmtpConfig
    http: HttpConfig = Field(default_factory=HttpConfig)
    spool: SpoolConfig
    queue: QueueConfig = Field(default_factory=QueueConfig)
    organisation: OrganisationConfig
    routes: RoutesConfig
    dns: DnsConfig = Field(default_factory=DnsConfig)
    tags: TagsConfig = Field(default_factory=TagsConfig)
    sepo: SepoConfig
    directory: DirectoryConfig = Field(default_factory=lambda: DirectoryConfig(backend=None))
    transport_security: TransportSecurityConfig = Field(
        default_factory=TransportSecurityConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    dlp: DlpConfig = Field(default_factory=DlpConfig)
    inbound: InboundConfig = Field(default_factory=InboundConfig)
    addin: AddinConfig = Field(default_factory=AddinConfig)
    departments: tuple[DepartmentConfig, ...] = ()

    @model_validator(mode="after")
    def _inbound_stores(self) -> Config:
        if self.inbound.harvest is not None and self.directory.backend is None:
            raise FieldProblem("inbound.harvest", "needs a [directory] with trust_anchors: "
                               "learnt certificates are validated against them")
        if self.inbound.reply_map is None and not self.cluster.database:
            for i, dep in enumerate(self.departments):
                if dep.replies == "department":
                    raise FieldProblem(f"departments[{i}].replies", '"department" needs '
                                       "inbound.reply_map, the folder that remembers who sent "
                                       "each secure mail")
        return self


def load(path: Path) -> Config:
    """Read and validate one configuration file; ConfigError for the first problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, "", "configuration file not found") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    path = path.resolve()
    if "path" in raw:
        raise ConfigError(path, "path", "unknown key")
    try:
        config = Config.model_validate({**raw, "path": path}, context={"file": path})
    except ValidationError as e:
        raise _config_error(path, e) from None
    seen: set[str] = set()
    for i, dep in enumerate(config.departments):
        if dep.id.lower() in seen:
            raise ConfigError(path, f"departments[{i}].id", f"{dep.id!r} is used by two "
                                                              "departments")
        seen.add(dep.id.lower())
    return config


def _config_error(path: Path, error: ValidationError) -> ConfigError:
    """The first validation problem as `file: dotted.key: message`."""
    first = error.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    problem = first.get("ctx", {}).get("error")
    if isinstance(problem, FieldProblem):
        loc += (problem.field,)
    return ConfigError(path, _key(loc), _message(first))


def _key(loc: tuple[int | str, ...]) -> str:
    """`departments[0].id` for a table in an array; an item of a plain list names the list."""
    key = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if i + 1 < len(loc):
                key += f"[{part}]"
        else:
            key += f".{part}" if key else part
    return key


_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown key",
    "model_type": "must be a table",
    "dict_type": "must be a table",
    "model_attributes_type": "must be a table",
    "too_short": "needs at least one value",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def _message(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "missing" and len(error["loc"]) == 1:
        return "section is missing"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return "must be " + str(ctx.get("expected", "")).replace("'", '"')
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    return str(error["msg"]).replace("Input should be", "must be", 1)
