"""A real OpenLDAP slapd for tests: an OCES-like certificate directory on a loopback port.

Each Slapd gets its own folder with a cn=config built by `slapadd -n0` (schemas core,
cosine, inetorgperson; one mdb database for `c=DK`), listens on ldap://127.0.0.1:PORT
(StartTLS too, and ldaps:// when given a CA), and is seeded with `ldapadd` as the rootdn.
start/stop/restart keep the port and the data, so a test can take the directory away in
the middle of a run and bring it back; pause/resume freeze the process (SIGSTOP/SIGCONT)
to stand in for a server that accepts connections but never answers. Needs no root (a
high port, its own folder) and does not mind it (no -u: slapd runs as the caller).
RFC 2849 (LDIF) for the seed data; entries carry `userCertificate;binary` (RFC 4523).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tests.support.pki import CA
from tests.support.ports import free_port

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SUFFIX = "c=DK"
ROOT_DN = "cn=admin,c=DK"
ROOT_PW = "admin-secret"

# RFC 2849 SAFE-STRING: values outside it are written base64.
_SAFE_STRING = re.compile(
    r"[\x01-\x09\x0b\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b\x0c\x0e-\x7f]*")


def available() -> bool:
    """True when slapd and the client tools this helper drives are installed."""
    return all(Path(p).exists() for p in (SLAPD, SLAPADD)) and all(
        shutil.which(tool) for tool in ("ldapadd", "ldapwhoami"))


def ldif_line(name: str, value: str | bytes) -> str:
    """One `name: value` line, base64 (`name:: ...`) unless the value is a SAFE-STRING."""
    if isinstance(value, str) and (value == "" or _SAFE_STRING.fullmatch(value)) and (
        not value.endswith(" ")
    ):
        return f"{name}: {value}"
    raw = value.encode() if isinstance(value, str) else value
    return f"{name}:: {base64.b64encode(raw).decode()}"


def ldif_record(dn: str, attributes: Iterable[tuple[str, str | bytes]]) -> str:
    return "\n".join([ldif_line("dn", dn), *(ldif_line(k, v) for k, v in attributes)]) + "\n"


class Slapd:
    """One slapd process with its configuration and data under `root`."""

    def __init__(self, root: Path, *, ca: CA | None = None) -> None:
        self.root = root
        self.conf_dir = root / "slapd.d"
        self.data_dir = root / "data"
        self.log_file = root / "slapd.log"
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_port: int | None = None
        self.ldaps_url: str | None = None
        self.ca_file: Path | None = None  # the CA that signed the server certificate
        self.root_dn = ROOT_DN
        self.root_password = ROOT_PW
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._known: set[str] = {SUFFIX.lower()}
        tls = self._write_tls(ca) if ca is not None else None
        self._build_config(tls)

    def _write_tls(self, ca: CA) -> tuple[Path, Path, Path]:
        self.ldaps_port = free_port()
        self.ldaps_url = f"ldaps://127.0.0.1:{self.ldaps_port}"
        tls_dir = self.root / "tls"
        tls_dir.mkdir(parents=True)
        server = ca.issue(common_name="127.0.0.1", dns_names=["localhost"],
                          ips=["127.0.0.1"], server=True)
        cert, key, ca_file = tls_dir / "server.pem", tls_dir / "server.key", tls_dir / "ca.pem"
        server.write(cert, key)
        ca_file.write_bytes(ca.pem)
        self.ca_file = ca_file
        return cert, key, ca_file

    def _build_config(self, tls: tuple[Path, Path, Path] | None) -> None:
        self.conf_dir.mkdir(parents=True)
        self.data_dir.mkdir(parents=True)
        tls_lines = ""
        if tls:
            tls_lines = (f"olcTLSCertificateFile: {tls[0]}\n"
                         f"olcTLSCertificateKeyFile: {tls[1]}\n"
                         f"olcTLSCACertificateFile: {tls[2]}\n")
        schemas = "".join(f"include: file://{SCHEMA_DIR / name}.ldif\n\n"
                          for name in ("core", "cosine", "inetorgperson"))
        config = f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {self.root / "slapd.pid"}
olcLogLevel: none
{tls_lines}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_DIR}
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}\
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcDbDirectory: {self.data_dir}
olcDbMaxSize: 67108864
olcDbIndex: objectClass eq
olcDbIndex: mail eq
olcRootDN: {ROOT_DN}
olcRootPW: {ROOT_PW}
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by * read
"""
        (self.root / "config.ldif").write_text(config)
        self._run([SLAPADD, "-n0", "-F", str(self.conf_dir), "-l", str(self.root / "config.ldif")])
        seed = ldif_record(SUFFIX, [("objectClass", "country"), ("c", "DK")])
        (self.root / "seed.ldif").write_text(seed)
        self._run([SLAPADD, "-n1", "-F", str(self.conf_dir), "-l", str(self.root / "seed.ldif")])

    def _run(self, argv: list[str], stdin: str | None = None) -> None:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10) -> None:
        """Start slapd (same port, same data as before) and wait until it answers."""
        if self.running:
            return
        urls = self.url + (f" {self.ldaps_url}" if self.ldaps_url else "")
        with self.log_file.open("ab") as log:
            # -d keeps slapd in the foreground, so this object owns the process.
            self._process = subprocess.Popen(
                [SLAPD, "-F", str(self.conf_dir), "-h", urls, "-d", "0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(f"slapd exited with {self._process.returncode}; "
                                   f"see {self.log_file}: {self.log_file.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"slapd did not answer on {self.url} within {timeout}s")
            time.sleep(0.02)

    def _answers(self) -> bool:
        done = subprocess.run(["ldapwhoami", "-x", "-H", self.url, "-o", "nettimeout=1"],
                              capture_output=True, timeout=10)
        return done.returncode == 0

    def stop(self) -> None:
        """Stop slapd (resuming it first if paused) and wait for it to exit; data stay."""
        if self._process is None:
            return
        if self._process.poll() is None:
            if self._paused:
                self.resume()
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze slapd: connections are still accepted by the kernel, nothing answers."""
        assert self._process is not None and self.running, "slapd is not running"
        os.kill(self._process.pid, signal.SIGSTOP)
        os.waitpid(self._process.pid, os.WUNTRACED)  # returns once it has really stopped
        self._paused = True

    def resume(self) -> None:
        assert self._process is not None, "slapd is not running"
        os.kill(self._process.pid, signal.SIGCONT)
        os.waitpid(self._process.pid, os.WCONTINUED)
        self._paused = False

    def add(self, ldif: str) -> None:
        """Add the entries of an LDIF text as the rootdn (slapd must be running)."""
        self._run(["ldapadd", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW], stdin=ldif)

    def _parents(self, dn: str) -> str:
        """LDIF for the missing organisations above `dn` (o=...,c=DK), outermost first."""
        rdns = _split_dn(dn)[1:]
        records = []
        for i in range(len(rdns) - 1, -1, -1):
            parent = ",".join(rdns[i:])
            if parent.lower() in self._known:
                continue
            name, _, value = rdns[i].partition("=")
            if name.strip().lower() != "o":
                raise ValueError(f"missing parent {parent!r} is not an organisation (o=...)")
            records.append(ldif_record(parent, [("objectClass", "organization"),
                                                ("o", _unescape(value))]))
            self._known.add(parent.lower())
        return "\n".join(records)

    def add_entry(
        self,
        dn: str,
        mail: str | Iterable[str] | None,
        certs_der: Iterable[bytes] = (),
        *,
        attr: str = "userCertificate;binary",
        password: str | None = None,
    ) -> None:
        """Add an inetOrgPerson (and the organisations above it) with mail and certificates.

        `attr` is where the certificates go: `userCertificate;binary` or
        `userSMIMECertificate;binary`. A `password` makes the entry usable as a bind DN.
        """
        rdn_name, _, rdn_value = _split_dn(dn)[0].partition("=")
        value = _unescape(rdn_value)
        attributes: list[tuple[str, str | bytes]] = [("objectClass", "inetOrgPerson"),
                                                     ("cn", value), ("sn", value)]
        if rdn_name.strip().lower() not in ("cn", "sn"):
            attributes.append((rdn_name.strip(), value))
        mails = [mail] if isinstance(mail, str) else list(mail or [])
        attributes += [("mail", m) for m in mails]
        attributes += [(attr, der) for der in certs_der]
        if password is not None:
            attributes.append(("userPassword", password))
        parents = self._parents(dn)
        self.add(parents + ("\n" if parents else "") + ldif_record(dn, attributes))
        self._known.add(dn.lower())

    def close(self) -> None:
        """Stop slapd; the folder is the caller's (a pytest tmp_path)."""
        self.stop()

    def __enter__(self) -> Slapd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _split_dn(dn: str) -> list[str]:
    """The RDNs of a DN (RFC 4514), split on unescaped commas."""
    return [part.strip() for part in re.split(r"(?<!\\),", dn)]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value.strip())
