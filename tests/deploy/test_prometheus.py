"""deploy/prometheus/: the scrape configuration and the alert rules, checked by promtool
(Debian's `prometheus` package) and unit-tested per alert (tests/deploy/alerts_test.yml)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.support.promql import PROMETHEUS_OWN, exported_series, metric_names, selectors

ROOT = Path(__file__).parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = Path(__file__).with_name("alerts_test.yml")
# What the issue asks to be alerted on, and the rule that does it.
REQUIRED = {"gateway down": "SendSikkertDown", "queue oldest age": "SendSikkertQueueStuck",
            "tunnel TLS failures": "SendSikkertTunnelTlsFailing",
            "directory errors": "SendSikkertDirectoryFailing",
            "certificate expiry within 30 days": "SendSikkertDepartmentCertificateExpiring",
            "DSN storm": "SendSikkertDsnStorm"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False)


def rules() -> list[dict]:
    return [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]


def test_the_rules_pass_promtool_check():
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_scrape_configuration_passes_promtool_check():
    done = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "send-sikkert" and config["rule_files"] == ["alerts.yml"]
    for rule in rules():  # the job the rules select is the one scraped
        jobs = {s.matchers["job"] for s in selectors(rule["expr"]) if "job" in s.matchers}
        assert jobs <= {("=", "send-sikkert")}, rule["alert"]


def test_every_alert_fires_and_stays_quiet_in_its_unit_test():
    done = promtool("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    alerts = {r["alert"] for r in rules()}
    assert set(cases) == alerts
    for alert, fired in cases.items():
        assert True in fired and False in fired, f"{alert}: needs a firing and a quiet case"


def test_the_issue_s_alerts_are_there_with_severity_and_advice():
    by_name = {r["alert"]: r for r in rules()}
    assert set(REQUIRED.values()) <= set(by_name)
    for rule in by_name.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40
    assert "30 * 86400" in by_name[REQUIRED["certificate expiry within 30 days"]]["expr"]


def test_the_rules_query_only_what_the_gateway_exports():
    exported = exported_series() | PROMETHEUS_OWN
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names and names <= exported, (rule["alert"], names - exported)
