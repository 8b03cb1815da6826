"""What the dashboard and the alert rules ask Prometheus for, and what the gateway exports.

`selectors` parses PromQL with promql-parser (a real PromQL parser, not a regex) and
returns every vector selector in it; `exported_series` lists the series names the
metrics declared in gateway/observe/metrics.py produce (a counter's `_total`, a
histogram's `_bucket`, `_sum` and `_count`), which is what /metrics exports whether one
process or several serve it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import promql_parser
from prometheus_client.metrics import MetricWrapperBase

from gateway.observe import metrics

# Grafana's variables, replaced as Grafana would before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "2m", "$__interval": "1m", "$__range": "6h",
                     "${instance}": ".*", "$instance": ".*"}
# Series Prometheus makes itself.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "ALERTS"}


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: dict[str, tuple[str, str]]  # label -> (operator, value)


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of an expression; ValueError when it is not PromQL."""
    found: list[Selector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(Selector(node.name or "", {
                m.name: (_OPERATORS[str(m.op)], m.value) for m in node.matchers.matchers}))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


_OPERATORS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~",
              "MatchOp.NotRe": "!~"}


def exported_series() -> set[str]:
    """Series names of every metric declared in gateway/observe/metrics.py."""
    names = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            if family.type == "counter":
                names |= {f"{family.name}_total", f"{family.name}_created"}
            elif family.type == "histogram":
                names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
            elif family.type == "summary":
                names |= {family.name, f"{family.name}_sum", f"{family.name}_count"}
            else:
                names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr)}


def label_values_query(definition: str) -> str:
    """The series selector inside Grafana's `label_values(selector, label)`."""
    m = re.fullmatch(r"label_values\((.*),\s*\w+\)", definition)
    assert m, definition
    return m[1]
