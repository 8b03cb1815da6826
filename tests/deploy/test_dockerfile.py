"""The Dockerfile without Docker: what it asks for (slim base, a non-root user, the queue
on a volume, a health check, signals reaching the gateway), and its commands run as the
container would run them: ENTRYPOINT + CMD with the image's environment, its HEALTHCHECK
against that process, and its STOPSIGNAL stopping it cleanly with the queue kept."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import yaml

from tests.support.daemon import SCRIPT, GatewayConfig
from tests.support.pki import CA
from tests.support.sink import SmtpSink

ROOT = Path(__file__).parents[2]
TRY_LATER = "451 4.3.0 try again later"
MESSAGE = b"From: lela@brondby.dk\r\nTo: ven@example.org\r\nSubject: Hej\r\n\r\nHej\r\n"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    start = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[start:]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"{arguments}: not the exec form"
    return value


def one(word: str) -> str:
    [value] = [rest for w, rest in final_stage() if w == word]
    return value


def test_slim_base_non_root_user_volume_and_health_check():
    assert one("FROM").startswith("python:3.11-slim")
    user = one("USER")
    assert user not in ("root", "0")
    words = [w for w, _ in final_stage()]
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert yaml.safe_load(one("VOLUME")) == ["/opt/send-sikkert/var"]
    assert one("STOPSIGNAL") == "SIGTERM"
    assert exec_form(one("ENTRYPOINT")) == ["send-sikkert"]
    health = one("HEALTHCHECK")
    assert "CMD [" in health and "SEND_SIKKERT_HEALTH_URL" in health
    env = one("ENV")
    assert "SEND_SIKKERT_HEALTH_URL=http://127.0.0.1:8025/healthz" in env
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source


def health_check(port: int) -> int:
    """The image's HEALTHCHECK command, pointed at the test's HTTP port."""
    command = exec_form(one("HEALTHCHECK").split("CMD", 1)[1].strip())
    assert command[0] == "python"
    env = {**os.environ, "SEND_SIKKERT_HEALTH_URL": f"http://127.0.0.1:{port}/healthz"}
    return subprocess.run([Path(SCRIPT).with_name("python"), *command[1:]], env=env,
                          capture_output=True, timeout=30).returncode


def container(config: GatewayConfig) -> subprocess.Popen[bytes]:
    """ENTRYPOINT + CMD with SEND_SIKKERT_CONFIG, as docker-compose.yml runs the image."""
    argv = exec_form(one("ENTRYPOINT")) + exec_form(one("CMD"))
    argv[0] = str(Path(SCRIPT).with_name(argv[0]))
    env = {**os.environ, "SEND_SIKKERT_CONFIG": str(config.path), "PYTHONUNBUFFERED": "1"}
    log = open(config.root / "container.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        return subprocess.Popen(argv, env=env, stderr=log, stdout=subprocess.DEVNULL)
    finally:
        log.close()


def wait_healthy(config: GatewayConfig, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while health_check(config.http_port) != 0:
        assert proc.poll() is None and time.monotonic() < deadline, (
            config.root / "container.log").read_text()
        time.sleep(0.1)


def send(config: GatewayConfig) -> None:
    with smtplib.SMTP("127.0.0.1", config.smtp_port, timeout=30) as client:
        client.sendmail("lela@brondby.dk", ["ven@example.org"], MESSAGE)


async def test_the_container_s_commands_run_and_stop_cleanly_keeping_the_queue(
        tmp_path: Path):
    config = GatewayConfig(tmp_path, CA("send-sikkert container test CA"))
    async with SmtpSink(refuse={"ven@example.org": TRY_LATER}) as next_hop:
        config.default_route = next_hop.route
        config.write()
        gateway = container(config)
        try:
            await asyncio.to_thread(wait_healthy, config, gateway)
            await asyncio.to_thread(send, config)
            while not next_hop.commands:  # noqa: ASYNC110 - the daemon is another process
                await asyncio.sleep(0.05)
            gateway.send_signal(signal.Signals[one("STOPSIGNAL")])
            grace = yaml.safe_load((ROOT / "docker-compose.yml").read_text())[
                "services"]["gateway"]["stop_grace_period"]
            assert await asyncio.to_thread(gateway.wait, int(grace.rstrip("s"))) == 0
        finally:
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait()
        assert health_check(config.http_port) != 0  # stopped: the check fails
        assert len(list(config.spool.glob("w[0-9]*/*.msg"))) == 1  # the deferred message kept

        next_hop.refuse.clear()  # the container starts again on the same volume
        again = container(config)
        try:
            [received] = await next_hop.wait_for(1, within=30)
            assert received.rcpt_tos == ["ven@example.org"]
        finally:
            again.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(again.wait, 40) == 0
    log = (config.root / "container.log").read_text()
    assert log.count("gateway.app") and "picked up 1 message(s) from the spool" in log
