"""Run the real gateway as a subprocess through its console script, on loopback ports.

`GatewayConfig` writes a complete configuration (with a department identity from the
test PKI); `Daemon` starts `send-sikkert serve`, waits until SMTP and HTTP answer, sends
with smtplib and stops with SIGTERM.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.pki import CA
from tests.support.sink import free_port

SCRIPT = str(Path(sys.executable).with_name("send-sikkert"))
ADDIN_ID = "82c42fe1-1b56-4240-b588-b826a6a50405"  # the tests' Outlook add-in GUID


def listening(ports: Iterable[int]) -> dict[str, int]:
    """The listening TCP sockets on `ports` (any address): {"socket:[inode]": port}."""
    wanted = set(ports)
    found: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[3] == "0A" and port in wanted:  # 0A: LISTEN
                    found[f"socket:[{fields[9]}]"] = port
    return found


def holders(sockets: Iterable[str], pids: Iterable[int]) -> dict[str, set[int]]:
    """Which of `pids` hold each of `sockets` (names as `listening` gives them)."""
    wanted = set(sockets)
    held: dict[str, set[int]] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    name = os.readlink(fd.path)
                    if name in wanted:
                        held.setdefault(name, set()).add(pid)
    return held


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (a supervisor's workers, their helpers)."""
    children: dict[int, list[int]] = {}
    for child in _pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{child}/stat").read_text()
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(child)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def describe(pids: Iterable[int]) -> str:
    """pid and command line of each process, for an error message."""
    out = []
    for pid in sorted(pids):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            cmdline = "(gone)"
        out.append(f"pid {pid}: {cmdline.strip()[:200]}")
    return "; ".join(out)


def _pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


@dataclass
class GatewayConfig:
    """Everything a test may vary; `write()` turns it into gateway.toml in `root`."""

    root: Path
    ca: CA
    smtp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    relay_networks: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    max_message_size: int = 1_000_000
    # One worker keeps the many daemon starts of the suite cheap on shared cores; the
    # scenarios of several workers (tests/e2e/test_workers.py) ask for more.
    workers: int = 1
    spool_sync: str = ""  # spool.sync; "": the default
    smtp_tls: str = ""  # a [smtp.tls] table, e.g. 'cert = "..."\nkey = "..."'
    smtp_extra: str = ""  # more [smtp] keys, e.g. "timeout = 1"
    internal_route: str = ""
    default_route: str = ""
    transport: dict[str, str] = field(default_factory=dict)
    mx_port: int = 25
    nameservers: list[str] = field(default_factory=list)
    sepo: list[str] = field(default_factory=lambda: ["ast.dk"])
    sepo_ca_file: str = ""
    min_tls: str = "1.2"
    sepo_watch_interval: float = 10
    retry_min: float = 1
    retry_max: float = 2
    delay_warning: float = 3600
    max_age: float = 7200
    directory: str = ""  # a whole [directory] table; "" writes a files directory
    extra: str = ""  # appended verbatim
    departments: str = ""  # "" writes the aeldreomsorg department
    https: bool = False  # [http.tls] with a certificate from `ca` for localhost and 127.0.0.1
    replies: str = "person"  # that department's `replies`

    def __post_init__(self) -> None:
        self.outbox = self.root / "outbox"
        self.spool = self.root / "spool"
        self.certs = self.root / "certs"
        for d in (self.certs / "directory", self.certs / "trust"):
            d.mkdir(parents=True, exist_ok=True)
        (self.certs / "trust" / "ca.pem").write_bytes(self.ca.pem)
        self.department = self.ca.issue("aeldreomsorg@brondby.dk")
        self.department.write(self.certs / "aeldreomsorg.pem", self.certs / "aeldreomsorg.key")
        self.https_cert = self.ca.issue(common_name="localhost", dns_names=["localhost"],
                                        ips=["127.0.0.1"], server=True)
        self.https_cert.write(self.certs / "https.pem", self.certs / "https.key")

    @property
    def http_url(self) -> str:
        return f"{'https' if self.https else 'http'}://127.0.0.1:{self.http_port}"

    def enable_addin(self, host: str = "127.0.0.1") -> None:
        """Serve the Outlook add-in (needs `https`) at https://host:http_port."""
        self.extra += (f'\n[addin]\npublic_url = "https://{host}:{self.http_port}"\n'
                       f'id = "{ADDIN_ID}"\n')

    def client_tls(self) -> ssl.SSLContext | None:
        """A client context that trusts the test CA, for HTTPS; None for plain HTTP."""
        return ssl.create_default_context(cadata=self.ca.pem.decode()) if self.https else None

    @property
    def path(self) -> Path:
        return self.root / "gateway.toml"

    def write(self) -> Path:
        internal = self.internal_route or f"file:{self.outbox}"
        default = self.default_route or f"file:{self.outbox}"
        transport = "\n".join(f'"{d}" = "{r}"' for d, r in self.transport.items())
        (self.root / "sepo.txt").write_text("\n".join(self.sepo) + "\n")
        directory = self.directory or f"""[directory]
backend = "files"
path = "{self.certs / 'directory'}"
trust_anchors = ["{self.certs / 'trust'}/*.pem"]
"""
        departments = self.departments or f"""[[departments]]
id = "aeldreomsorg"
name = "Ældre og Omsorg"
mailbox = "aeldreomsorg@brondby.dk"
cert = "{self.certs / 'aeldreomsorg.pem'}"
key = "{self.certs / 'aeldreomsorg.key'}"
stamp = "Sendt sikkert via Ældre og Omsorg"
senders = ["*@brondby.dk"]
default_for = ["*@brondby.dk"]
replies = "{self.replies}"
"""
        https = (f'[http.tls]\ncert = "{self.certs / "https.pem"}"\n'
                 f'key = "{self.certs / "https.key"}"\n') if self.https else ""
        self.path.write_text(f"""
[smtp]
listen = ["127.0.0.1:{self.smtp_port}"]
hostname = "sikkermail.brondby.example"
relay_networks = {toml_list(self.relay_networks)}
max_message_size = {self.max_message_size}
{self.smtp_extra}
{"[smtp.tls]" if self.smtp_tls else ""}
{self.smtp_tls}

[http]
listen = "127.0.0.1:{self.http_port}"
{https}

[spool]
dir = "{self.spool}"
workers = {self.workers}
{f'sync = "{self.spool_sync}"' if self.spool_sync else ""}

[queue]
retry_min = {self.retry_min}
retry_max = {self.retry_max}
delay_warning = {self.delay_warning}
max_age = {self.max_age}

[organisation]
name = "Brøndby Kommune"
internal_domains = ["brondby.dk"]

[routes]
internal = "{internal}"
default = "{default}"
mx_port = {self.mx_port}
[routes.transport]
{transport}

[dns]
nameservers = {toml_list(self.nameservers)}

[tags]
header = "X-Send-Sikkert"
subject = '(?P<keyword>[A-Za-z0-9._-]+)%%'

[sepo]
list = "sepo.txt"
ca_file = "{self.sepo_ca_file}"
min_tls = "{self.min_tls}"
watch_interval = {self.sepo_watch_interval}

{directory}
{departments}
{self.extra}
""", encoding="utf-8")
        return self.path


class Daemon:
    """One `send-sikkert serve` process."""

    def __init__(self, config: GatewayConfig, env: dict[str, str] | None = None,
                 serve_args: tuple[str, ...] = (), wrapper: tuple[str, ...] = ()) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.serve_args = serve_args  # e.g. ("--log-format", "json")
        self.wrapper = wrapper  # a command the daemon runs under, e.g. ("strace", ...)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.root / "gateway.log"

    def start(self, timeout: float = 20) -> Daemon:
        """Start the daemon and wait until it answers on both its ports.

        Should another process hold one of them (`free_port` reserves, so it should not),
        the error names that process rather than leaving the test to read its replies.
        """
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        problem = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode} ({problem})"
                                   f"{self._strangers()}:\n{self.logs()}")
            problem = self._unanswered()
            if not problem:
                strangers = self._strangers()
                if strangers:
                    raise RuntimeError(f"gateway answered, but{strangers}:\n{self.logs()}")
                return self
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start within {timeout} s ({problem})"
                           f"{self._strangers()}:\n{self.logs()}")

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the daemon's process, without waiting for it to answer."""
        self.config.write()
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([*self.wrapper, SCRIPT, "--config",
                                          str(self.config.path), "serve", *self.serve_args],
                                         stdout=subprocess.DEVNULL, stderr=log, env=self.env)
        return self.proc

    def _unanswered(self) -> str:
        """What has not answered yet: "" once /healthz says 200 and SMTP greets with 220."""
        try:
            status, body = self.http("/healthz")
            if status != 200:
                return f"/healthz answered {status} {body}"
            with socket.create_connection(("127.0.0.1", self.config.smtp_port), 5) as s:
                s.settimeout(5)
                banner = s.recv(512)
        except (OSError, http.client.HTTPException) as e:  # a stranger's reply included
            return f"{type(e).__name__}: {str(e).strip()}"
        if not banner.startswith(b"220 "):
            return f"the SMTP port greeted with {banner[:80]!r}"
        return ""

    def _strangers(self) -> str:
        """" and port N is also held by pid P: cmdline" for any listener on the daemon's
        ports outside its process tree; "" when there is none."""
        assert self.proc is not None
        ports = {self.config.smtp_port: "SMTP", self.config.http_port: "HTTP"}
        sockets = listening(ports)
        ours = holders(sockets, [self.proc.pid, *descendants(self.proc.pid)])
        theirs = holders(set(sockets) - set(ours), _pids())
        return "".join(f" and {ports[sockets[s]]} port {sockets[s]} is held by "
                       f"{describe(pids)}" for s, pids in theirs.items())

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def worker_pids(self) -> list[int]:
        """The worker processes under this daemon's supervisor."""
        assert self.proc is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rindex(")") + 2:].split()[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return sorted(pids)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def smtp(self, source: str = "") -> smtplib.SMTP:
        """A client session, from the loopback address `source` (e.g. "127.0.0.9") if given."""
        client = smtplib.SMTP("127.0.0.1", self.config.smtp_port, timeout=30,
                              source_address=(source, 0) if source else None)
        client.ehlo("mail.partner.dk" if source else "exchange.brondby.dk")
        return client

    def send(self, sender: str, recipients: list[str], data: bytes,
             mail_options: tuple[str, ...] = (), rcpt_options: tuple[str, ...] = (),
             source: str = "") -> str:
        """Send one message; return the queue id from the 250 reply."""
        with self.smtp(source) as client:
            code, reply = client.mail(sender, list(mail_options))
            assert code == 250, reply
            for r in recipients:
                code, reply = client.rcpt(r, list(rcpt_options))
                assert code == 250, (r, code, reply)
            code, reply = client.data(data)
            assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[-1]

    def http(self, path: str, method: str = "GET") -> tuple[int, dict]:
        request = urllib.request.Request(self.config.http_url + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10,
                                        context=self.config.client_tls()) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            body, status = e.read(), e.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"text": body.decode(errors="replace")}

    def metrics(self) -> str:
        with urllib.request.urlopen(self.config.http_url + "/metrics", timeout=10,
                                    context=self.config.client_tls()) as response:
            return response.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample, 0 when it is not exported yet."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            sample_name, _, label_text = sample.partition("{")
            got = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if sample_name == name and got == want:
                return float(value)
        return 0.0

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SCRIPT, "--config", str(self.config.path), *args],
                              capture_output=True, text=True, env=self.env, check=check,
                              timeout=60)

    def outbox(self) -> list[Path]:
        if not self.config.outbox.exists():
            return []
        return sorted(self.config.outbox.glob("*.eml"))

    def wait_outbox(self, count: int, timeout: float = 20) -> list[Path]:
        """Every file in the outbox, once `count` of them are delivered in full.

        A file is there from its creation, before it is written and fsynced and before the
        delivery is counted and logged; the daemon's "delivered ... relay=PATH" line says
        all of that is done, so a test may then read the file, the metrics and the log.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.outbox()
            if len(files) >= count:
                log = self.logs()
                if sum(str(f) in log for f in files) >= count:
                    return self.outbox()
            time.sleep(0.05)
        raise AssertionError(f"expected {count} delivered file(s) in the outbox, got "
                             f"{self.outbox()}:\n{self.logs()[-4000:]}")

    def spooled(self) -> list[Path]:
        """The message file of every queued message, in every worker's part of the spool
        (.eml: of the two-file layout of older versions)."""
        spool = self.config.spool
        return sorted(path for pattern in ("*.msg", "*.eml")
                      for path in [*spool.glob(pattern), *spool.glob(f"w[0-9]*/{pattern}")])

    def wait_queue_empty(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.spooled():
                return
            time.sleep(0.05)
        raise AssertionError(f"queue not empty:\n{self.logs()[-4000:]}")


def start(config: GatewayConfig, daemons: list[Daemon]) -> Daemon:
    """Start a daemon on `config` and add it to `daemons`, which the e2e fixture stops."""
    daemon = Daemon(config)
    daemons.append(daemon)
    return daemon.start()
