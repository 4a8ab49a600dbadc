"""contrib/: the Grafana dashboard and the Prometheus alerting rules stay true to what monitord exports.

The rules pass `promtool check rules` and their unit tests (`promtool test rules`, Debian package `prometheus`);
every metric the dashboard or a rule queries is one a running app's /metrics declares.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.plugins.api import ApiFactory

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"
DASHBOARD = CONTRIB / "grafana" / "monitord.json"
RULES = CONTRIB / "prometheus" / "alerts.yml"
RULE_TESTS = CONTRIB / "prometheus" / "alerts_test.yml"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself when it scrapes, not monitord's

# PromQL words that look like metric names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "label_values", "label_replace",
    "abs", "clamp_min", "clamp_max", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "time",
    "vector", "scalar", "absent", "changes", "resets", "round", "le",
}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",), "untyped": ("",),
            "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "unknown": ("",)}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (label matchers, groupings and strings left out)."""
    text = re.sub(r"label_values\(([^,]+),[^)]*\)", r"\1", expr)  # Grafana's variable query: the metric only
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", text))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d+e\d+|[a-z]", w)}


def exported(metrics_text: str) -> set[str]:
    """Every series name /metrics can carry, from its `# TYPE` lines (families with no sample yet included)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.M):
        base = name.removesuffix("_total") if kind == "counter" else name  # the text format names counters x_total
        names |= {base + suffix for suffix in SUFFIXES[kind]}
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    exprs += [var["definition"] for var in board["templating"]["list"] if var.get("definition")]
    return exprs


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


async def test_every_metric_the_dashboard_and_the_rules_query_is_exported(api_factory: ApiFactory) -> None:
    client, _ = await api_factory()
    resp = await client.get("/metrics")
    available = exported(await resp.text())
    assert "monitord_provider_up" in available and "monitord_probes_total" in available
    used = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    assert len(used) >= 20, used  # the parser found the dashboard's queries
    assert not used - available, f"the dashboard queries metrics /metrics does not export: {used - available}"
    in_rules = {name for expr in rule_exprs() for name in metric_names(expr)} - PROMETHEUS_OWN
    assert len(in_rules) >= 8, in_rules
    assert not in_rules - available, f"the rules name metrics /metrics does not export: {in_rules - available}"


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"  # the data source is chosen on import
    assert {var["name"] for var in board["templating"]["list"]} == {"datasource", "provider"}


def test_metric_names_reads_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, provider) (rate(monitord_probe_duration_seconds_bucket'
            '{provider=~"a|b", status!="up"}[5m]))) > 1 and on(provider) monitord_provider_up == 1')
    assert metric_names(expr) == {"monitord_probe_duration_seconds_bucket", "monitord_provider_up"}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (apt-get install prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def test_the_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = _promtool()
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, timeout=60,
                            cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
