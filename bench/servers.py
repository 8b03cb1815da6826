"""The programs the benchmark runs, each private to one run, on loopback ports.

- `Sink`: Postfix's `smtp-sink`, dumping every message to a file (in /dev/shm when
  there is one), so the bench can count what arrived, check that every message did,
  and time each arrival (the file's mtime).
- `Postfix`: a private Postfix instance (its own config_directory, queue and ports,
  never the system one). As the relay under test it forwards everything to the sink.
  As the TLS front it offers STARTTLS and passes every transaction on to the sink
  through `smtpd_proxy_filter`, without queueing: a real, multi-process TLS server
  written in C, so the tunnel case measures the relays, not the sink.
- `Gateway`: `send-sikkert serve` on a configuration written for the bench, with the
  development PKI for its department and S/MIME recipient.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

_BENCH_ID = re.compile(rb"^X-Bench-Id: (\S+)", re.MULTILINE)

POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                s.recv(100)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


def _unprivileged() -> str:
    for name in ("nobody", "postfix"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user for smtp-sink")


@dataclass
class Arrival:
    bench_id: str
    time: float  # when the sink finished writing it
    size: int


class Sink:
    """smtp-sink on a loopback port, every message dumped to its own file."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        self.dir.mkdir(parents=True, exist_ok=True)
        command = ["smtp-sink", "-d", f"{self.dir}/m.", "-m", "1000", "-t", "600"]
        if os.geteuid() == 0:
            user = _unprivileged()
            shutil.chown(self.dir, user)
            command += ["-u", user]
        self.proc = subprocess.Popen([*command, f"127.0.0.1:{self.port}", "1024"],
                                     stdout=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def clear(self) -> None:
        for path in self.dir.iterdir():
            path.unlink()

    def count(self) -> int:
        return sum(1 for _ in os.scandir(self.dir))

    def arrivals(self, min_size: int = 0) -> dict[str, Arrival]:
        """Every message dumped whole so far (at least `min_size` bytes), by its X-Bench-Id."""
        found: dict[str, Arrival] = {}
        for entry in os.scandir(self.dir):
            if entry.stat().st_size < min_size:
                continue  # still arriving: smtp-sink writes the file as DATA streams in
            with open(entry.path, "rb") as f:
                head = f.read(8192)
            m = _BENCH_ID.search(head)
            if m:
                st = entry.stat()
                bench_id = m[1].decode()
                found[bench_id] = Arrival(bench_id, st.st_mtime_ns / 1e9, st.st_size)
        return found

    def wait_for(self, expected: int, quiet: float = 30, limit: float = 600,
                 min_size: int = 0) -> None:
        """Until `expected` whole files are there and stopped growing, or nothing moved for
        `quiet` seconds."""
        started = last_change = time.monotonic()
        previous = (-1, -1)
        while time.monotonic() - started < limit:
            sizes = [e.stat().st_size for e in os.scandir(self.dir)]
            now = (len(sizes), sum(sizes))
            if now != previous:
                previous, last_change = now, time.monotonic()
            elif sum(1 for size in sizes if size >= min_size) >= expected:
                return
            if time.monotonic() - last_change > quiet:
                return
            time.sleep(0.05)


class Postfix:
    """A private Postfix instance: relay to `relayhost`, or TLS front with a proxy filter."""

    def __init__(self, root: Path, name: str, settings: dict[str, str]) -> None:
        self.root = root / name
        self.config_dir = self.root / "etc"
        self.queue = self.root / "queue"
        self.port = free_port()
        self.settings = settings

    def start(self) -> Postfix:
        for d in (self.config_dir, self.queue, self.root / "data"):
            d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root / "data", "postfix")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": f"{self.root.name}.bench.example",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "message_size_limit": "52428800",
            "maillog_file": str(self.root / "maillog"),
            "maillog_file_prefixes": str(self.root),
            "smtp_host_lookup": "native",
            "disable_dns_lookups": "yes",
            **self.settings,
        }
        (self.config_dir / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.config_dir / "master.cf").write_text(
            f"127.0.0.1:{self.port} inet n - n - - smtpd\n" + POSTFIX_SERVICES)
        self._postfix("start")
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if (self.config_dir / "main.cf").exists():
            self._postfix("stop", check=False)

    def master_pid(self) -> int:
        return int((self.queue / "pid" / "master.pid").read_text().split()[0])

    def _postfix(self, action: str, check: bool = True) -> None:
        result = subprocess.run(["postfix", "-c", str(self.config_dir), action],
                                capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"postfix {action}: {result.stderr.strip()}")


class Gateway:
    """send-sikkert serve on a bench configuration."""

    def __init__(self, root: Path, sink_port: int, front_port: int, ca_file: Path,
                 extra: str = "") -> None:
        self.root = root / "gateway"
        self.port = free_port()
        self.http_port = free_port()
        self.sink_port = sink_port
        self.front_port = front_port
        self.ca_file = ca_file
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.script = str(Path(sys.executable).with_name("send-sikkert"))

    @property
    def config(self) -> Path:
        return self.root / "gateway.toml"

    def start(self) -> Gateway:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "sepo.txt").write_text("sepo.bench.dk\n")
        sink = f"smtp://127.0.0.1:{self.sink_port}"
        self.config.write_text(f"""
[smtp]
listen = ["127.0.0.1:{self.port}"]
hostname = "gateway.bench.example"
relay_networks = ["127.0.0.0/8"]
max_message_size = 52428800

[http]
listen = "127.0.0.1:{self.http_port}"

[spool]
dir = "spool"

[organisation]
name = "Bench Kommune"
internal_domains = ["brondby.dk"]

[routes]
internal = "{sink}"
default = "{sink}"
[routes.transport]
"sepo.bench.dk" = "smtp://127.0.0.1:{self.front_port}"

[sepo]
list = "sepo.txt"
ca_file = "{self.ca_file}"
min_tls = "1.2"

[directory]
backend = "files"
path = "certs/directory"
trust_anchors = ["certs/trust/*.pem"]

[[departments]]
id = "aeldreomsorg"
name = "Ældre og Omsorg"
mailbox = "aeldreomsorg@brondby.dk"
cert = "certs/dev/aeldreomsorg.pem"
key = "certs/dev/aeldreomsorg.key"
stamp = "Sendt sikkert via Ældre og Omsorg"
senders = ["*@brondby.dk"]
default_for = ["*@brondby.dk"]
{self.extra}
""", encoding="utf-8")
        subprocess.run([self.script, "--config", str(self.config), "certs", "dev-init",
                        "--dir", str(self.root / "certs")], check=True,
                       capture_output=True)
        log = open(self.root / "gateway.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen([self.script, "--config", str(self.config), "serve"],
                                     stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}; see "
                                   f"{self.root / 'gateway.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz",
                                            timeout=1):
                    wait_port(self.port, proc=self.proc)
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gateway did not start")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def tls_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (the TLS front's)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "front.pem", directory / "front.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    os.chmod(key, 0o644)  # smtpd reads it after dropping privileges
    return cert, key
