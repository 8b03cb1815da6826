"""A real HAProxy in TCP mode in front of gateway nodes, on loopback, for tests.

Debian's `haproxy` runs in the foreground (`-db`) from a configuration in the test's own
folder: one frontend on a free port, one backend with the given servers, each sent the
PROXY protocol header (`send-proxy-v2`, or `send-proxy` for v1) from `source`, so that
the gateway can tell the balancer (a trusted proxy) from the clients behind it. Health
checks every 200 ms take a dead node out quickly and `option redispatch` sends a refused
connection to another node, as an operator would configure it.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.sink import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def available() -> bool:
    return Path(HAPROXY).exists()


class HAProxy:
    """One haproxy process balancing `servers` (host, port) round-robin."""

    def __init__(self, root: Path, servers: list[tuple[str, int]], *,
                 send_proxy: str = "send-proxy-v2", source: str = "127.0.0.9",
                 host: str = "127.0.0.1") -> None:
        self.root, self.servers = root, servers
        self.send_proxy, self.source, self.host = send_proxy, source, host
        self.port = free_port(host)
        self.config = root / "haproxy.cfg"
        self.log = root / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self) -> None:
        servers = "\n".join(
            f"  server node{i} {host}:{port} {self.send_proxy} source {self.source} "
            "check inter 200ms fall 1 rise 2"
            for i, (host, port) in enumerate(self.servers, 1))
        self.config.write_text(f"""
global
  maxconn 500
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch 1
frontend smtp
  bind {self.host}:{self.port}
  default_backend gateways
backend gateways
  balance roundrobin
{servers}
""")

    def start(self, timeout: float = 10) -> HAProxy:
        self.root.mkdir(parents=True, exist_ok=True)
        self.write()
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(self.config)],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration:\n{check.stderr}")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)],
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.proc.returncode}:\n"
                                   f"{self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection((self.host, self.port), 1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("haproxy did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
