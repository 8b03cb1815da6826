"""A real Prometheus (Debian's) scrapes the real daemon with deploy/prometheus/: the target
is up, every alert rule evaluates without error and none fires on a healthy gateway, and
every query of the Grafana dashboard runs, the key ones with the values the gateway has.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import Daemon, GatewayConfig
from tests.support.promql import grafana_to_promql
from tests.support.sink import free_port

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "send-sikkert.json"


class Prometheus:
    """`prometheus` on a loopback port with deploy/prometheus/, pointed at one gateway."""

    def __init__(self, root: Path, target: str) -> None:
        config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ROOT / "deploy" / "prometheus" / f)
                                for f in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        self.config = root / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = root / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={self.config}",
                 f"--storage.tsdb.path={root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        """Prometheus answers its API only once /-/ready does (503 while it starts)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready",
                                        timeout=5) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return False

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:  # a bad query answers 400 with the error
            return json.loads(e.read())

    def query(self, expr: str) -> list[dict]:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", (expr, answer.get("error"))
        return answer["data"]["result"]

    def wait(self, predicate, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if predicate():
                    return
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def prometheus(tmp_path: Path, gateway: Daemon) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, f"127.0.0.1:{gateway.config.http_port}")
    server.wait(server.ready)
    yield server
    server.stop()


def values(result: list[dict], label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}


def test_prometheus_scrapes_the_gateway_and_the_dashboard_queries_run(
        config: GatewayConfig, gateway: Daemon, prometheus: Prometheus):
    gateway.send("lela@brondby.dk", ["gildhoej@brondby.dk"],
                 b"Subject: aeldreomsorg%% Hej\r\n\r\nHej\r\n")
    gateway.wait_outbox(1)
    prometheus.wait(lambda: values(prometheus.query(
        'sum by (class, outcome) (sendsikkert_recipients_total{job="send-sikkert"})'),
        "class").get("internal") == 1)
    assert values(prometheus.query('up{job="send-sikkert"}'), "job") == {"send-sikkert": 1}

    def evaluated() -> bool:
        groups = prometheus.api("rules")["data"]["groups"]
        return bool(groups) and all(r["lastEvaluation"] > "2000"
                                    for g in groups for r in g["rules"])
    prometheus.wait(evaluated)
    [group] = prometheus.api("rules")["data"]["groups"]
    assert {r["health"] for r in group["rules"]} == {"ok"}, group["rules"]
    assert [r["name"] for r in group["rules"] if r["state"] != "inactive"] == []

    time.sleep(2)  # two more scrapes, so that rate() over the panels' windows has data
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    results = {p["title"]: [prometheus.query(grafana_to_promql(t["expr"].replace(
        "$__rate_interval", "1m"))) for t in p["targets"]] for p in panels}
    [[days]] = results["Days until each department certificate expires"]
    assert days["metric"] == {"department": "aeldreomsorg"} and float(days["value"][1]) > 30
    assert float(results["Gateway"][0][0]["value"][1]) == 1
    assert float(results["Messages in the queue"][0][0]["value"][1]) == 0
    assert float(results["SEPO domains"][0][0]["value"][1]) == len(config.sepo)
    assert values(results["Last reload"][0], "source") == {"configuration": 1, "sepo": 1}
