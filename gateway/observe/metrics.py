"""Every Prometheus metric of the gateway, declared once, named as CONTRACT says.

Operators build dashboards on these names; modules import the objects from here and
update them where the events happen.
"""

from __future__ import annotations

import os
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.metrics import MetricWrapperBase

from gateway.observe import pid

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # The values prometheus-client would choose (gateway/observe/multiprocess.py), asking
    # `observe.pid` instead of getpid() on every update whether the process has forked.
    values.ValueClass = values.MultiProcessValue(process_identifier=pid.current)

_Metric = TypeVar("_Metric", bound=MetricWrapperBase)
_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}


def child(metric: _Metric, *values: str) -> _Metric:
    """`metric.labels(*values)` (in the order of its label names), looked up once.

    labels() checks the names and takes a lock on every call, about 10 µs, several
    times per message; the child it returns for the same values is always the same.
    """
    found = _children.get((metric, values))
    if found is None:
        found = _children[(metric, values)] = metric.labels(*values)
    return found  # type: ignore[return-value]

messages_received = Counter(
    "sendsikkert_messages_received_total",
    "Messages accepted over SMTP and spooled, by whether they were tagged for secure sending.",
    ["tagged"],
)
recipients = Counter(
    "sendsikkert_recipients_total",
    "Recipient outcomes by class (plain for untagged mail) and outcome.",
    ["class", "outcome"],
)
dsn_sent = Counter(
    "sendsikkert_dsn_sent_total",
    "Delivery status notifications generated, by action.",
    ["action"],
)
# Several worker processes write these (prometheus-client's multiprocess mode): each
# gauge says how the workers' values add up, and a dead worker's values are dropped.
queue_messages = Gauge("sendsikkert_queue_messages", "Messages in the spool.",
                       multiprocess_mode="livesum")
queue_oldest_age = Gauge(
    "sendsikkert_queue_oldest_age_seconds", "Age of the oldest message in the spool.",
    multiprocess_mode="livemax",
)
delivery_seconds = Histogram(
    "sendsikkert_delivery_seconds",
    "Time for one delivery transaction to the next hop, by route kind.",
    ["route"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
directory_lookup_seconds = Histogram(
    "sendsikkert_directory_lookup_seconds",
    "Time for one certificate directory lookup (cache misses only).",
    ["backend"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
directory_errors = Counter(
    "sendsikkert_directory_errors_total",
    "Certificate directory lookups that failed (the recipient's class became unknown).",
    ["backend"],
)
tls_failures = Counter(
    "sendsikkert_tls_failures_total",
    "Deliveries refused because TLS could not be had or verified, by route kind.",
    ["route"],
)
sepo_domains = Gauge("sendsikkert_sepo_domains", "Domains on the loaded SEPO member list.",
                     multiprocess_mode="livemostrecent")
department_cert_expiry = Gauge(
    "sendsikkert_department_cert_expiry_timestamp_seconds",
    "Expiry (notAfter, Unix time) of each department's signing certificate.",
    ["department"],
    multiprocess_mode="livemostrecent",
)
smtp_rejections = Counter(
    "sendsikkert_smtp_rejections_total",
    "SMTP commands refused at the edge, by reason.",
    ["reason"],
)
spool_write_seconds = Histogram(
    "sendsikkert_spool_write_seconds",
    "Time to make one accepted message durable (write, fsync, rename, fsync folder).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
dlp_findings = Counter(
    "sendsikkert_dlp_findings_total",
    "CPR numbers found in untagged mail, once per finding, by where and the action taken.",
    ["where", "action"],
)
dlp_incomplete = Counter(
    "sendsikkert_dlp_incomplete_total",
    "Untagged messages the DLP scan could not read in full, by the first reason: encrypted, "
    "unreadable, unsupported (legacy Office files) or limit.",
    ["reason"],
)
dlp_scan_seconds = Histogram(
    "sendsikkert_dlp_scan_seconds",
    "Time to scan one untagged message for CPR numbers (extraction and detection).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10, 30),
)
inbound_messages = Counter(
    "sendsikkert_inbound_total",
    "Mail from outside for internal recipients, by decryption result and signature.",
    ["result", "signature"],
)
certificates_learnt = Counter(
    "sendsikkert_certificates_learnt_total",
    "Recipient certificates added to the learnt store, by source.",
    ["source"],
)
tls_policy = Counter(
    "sendsikkert_tls_policy_total",
    "DANE and MTA-STS policy lookups for a recipient domain, by mechanism and result.",
    ["mechanism", "result"],
)
cluster_database_errors = Counter(
    "sendsikkert_cluster_database_errors_total",
    "Operations on the shared cluster database that failed (the lookup answered unknown).",
)
last_reload_successful = Gauge(
    "sendsikkert_last_reload_successful",
    "1 when the last reload of this source succeeded, 0 when it was refused and the running "
    "one kept (configuration: SIGHUP; sepo: the list file changed).",
    ["source"],
    multiprocess_mode="livemin",  # 0 when any process of the daemon refused it
)
