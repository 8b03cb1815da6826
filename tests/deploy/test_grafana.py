"""deploy/grafana/: the provisioned dashboard and its datasource.

Every query is parsed as PromQL (after Grafana's variables are filled in), asks only for
series the gateway exports, follows the dashboard's gateway picker, and together the
panels show what an operator watches (the issue's list).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.support.promql import (
    PROMETHEUS_OWN,
    exported_series,
    grafana_to_promql,
    label_values_query,
    selectors,
)

ROOT = Path(__file__).parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "send-sikkert.json"
# What the dashboard must show (issue 7 and CONTRACT "Metrics").
SHOWN = {
    "mail per class and outcome": "sendsikkert_recipients_total",
    "messages received": "sendsikkert_messages_received_total",
    "DSNs": "sendsikkert_dsn_sent_total",
    "queue depth": "sendsikkert_queue_messages",
    "queue oldest age": "sendsikkert_queue_oldest_age_seconds",
    "delivery latency percentiles": "sendsikkert_delivery_seconds_bucket",
    "directory latency": "sendsikkert_directory_lookup_seconds_bucket",
    "directory errors": "sendsikkert_directory_errors_total",
    "TLS failures": "sendsikkert_tls_failures_total",
    "department certificate expiry": "sendsikkert_department_cert_expiry_timestamp_seconds",
    "DLP findings": "sendsikkert_dlp_findings_total",
    "inbound": "sendsikkert_inbound_total",
    "certificates learnt": "sendsikkert_certificates_learnt_total",
    "TLS policy (DANE, MTA-STS)": "sendsikkert_tls_policy_total",
    "cluster database errors": "sendsikkert_cluster_database_errors_total",
}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    return [(p["title"], grafana_to_promql(t["expr"])) for p in panels() for t in p["targets"]]


def test_every_query_is_promql_on_exported_series():
    exported = exported_series() | PROMETHEUS_OWN
    for title, expr in queries():
        names = {s.name for s in selectors(expr)}
        assert names and names <= exported, (title, names - exported)


def test_the_panels_show_what_an_operator_watches():
    used = {s.name for _, expr in queries() for s in selectors(expr)}
    missing = {what for what, metric in SHOWN.items() if metric not in used}
    assert not missing
    titles = [p["title"] for p in panels()]
    assert "Delivery latency by route (p50, p90, p99)" in titles
    assert "Days until each department certificate expires" in titles


def test_every_panel_follows_the_gateway_picker_and_the_datasource_variable():
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["description"], panel["title"]
        for target in panel["targets"]:
            for selector in selectors(grafana_to_promql(target["expr"])):
                assert selector.matchers.get("job") == ("=", "send-sikkert"), panel["title"]
                assert selector.matchers.get("instance") == ("=~", ".*"), panel["title"]
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    [picker] = selectors(label_values_query(variables["instance"]["definition"]))
    assert picker.name == "up" and picker.matchers["job"] == ("=", "send-sikkert")


def test_the_layout_is_a_grid_without_overlaps():
    taken: set[tuple[int, int]] = set()
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                 for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_provisioning_points_grafana_at_prometheus_and_the_dashboard():
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    current = {v["name"]: v for v in dashboard()["templating"]["list"]}["datasource"]
    assert current["current"]["value"] == source["uid"]
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/send-sikkert.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"  # compose mounts it
    assert dashboard()["uid"] == "send-sikkert"
