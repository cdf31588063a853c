"""The checked-in Grafana dashboard asks only for series the processes export, and shows what an
operator needs first.

Needs no services: the metric names come from the collectors the code defines, the queries from
the dashboard's JSON.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.registry import Collector

from common.observability import metrics

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "observability" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DASHBOARD_PREFIX = "orders"
"""The dashboards are written for the default `APP_PREFIX`."""

REQUIRED_PANELS = {
    "Commands per second",
    "Accepted → visible latency",
    "Queue depths",
    "Projection lag",
    "Relay lag",
    "Dead letters",
    "RabbitMQ reconnects",
}
PROMETHEUS_SERIES = {"up": set[str]()}
"""Series Prometheus itself adds for every target it scrapes, with their labels."""
TARGET_LABELS = {"job", "instance"}
"""Labels Prometheus adds to every scraped series."""
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "bottomk", "ceil", "clamp", "clamp_max",
    "clamp_min", "count", "count_over_time", "delta", "deriv", "floor", "group",
    "histogram_quantile", "idelta", "increase", "irate", "label_replace", "max",
    "max_over_time", "min", "min_over_time", "quantile", "rate", "resets", "round",
    "scalar", "sort", "sort_desc", "stddev", "sum", "sum_over_time", "time", "topk", "vector",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
MATCHERS = re.compile(r"\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


@cache
def exported() -> dict[str, set[str]]:
    """Every sample name the gateway, command workers and projectors export, with its labels,
    under the dashboards' prefix."""
    collectors: dict[int, Collector] = {
        id(c): c for c in (*metrics.GATEWAY, *metrics.COMMAND_WORKER, *metrics.PROJECTOR)
    }
    names: dict[str, set[str]] = {}
    for collector in collectors.values():
        labels = set(getattr(collector, "_labelnames", ()))
        for family in collector.describe():
            base = DASHBOARD_PREFIX + family.name.removeprefix(metrics.NAMESPACE)
            for suffix in SAMPLE_SUFFIXES[family.type]:
                names[base + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def selected(expr: str) -> tuple[set[str], set[str]]:
    """The metric names a PromQL expression selects, and the label names it matches or groups
    by. Function names must be PromQL's; keywords, numbers, durations and strings are left out.
    """
    text = STRING.sub('""', expr)
    labels = set(MATCHER_LABEL.findall(" ".join(MATCHERS.findall(text))))
    for _keyword, listed in GROUPING.findall(text):
        labels |= {label.strip() for label in listed.split(",") if label.strip()}
    text = GROUPING.sub(" ", MATCHERS.sub(" ", re.sub(r"\[[^\]]*\]", " ", text)))
    names = set()
    for name, call in IDENTIFIER.findall(text):
        if call:
            assert name in FUNCTIONS, f"{name}() is not a PromQL function: {expr}"
        elif name not in KEYWORDS:
            names.add(name)
    return names, labels


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows hold panels, collapsed rows inside them)."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


@pytest.fixture(scope="module", params=DASHBOARDS, ids=lambda path: path.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(request.param.read_text())
    return loaded


def test_the_query_parser_finds_metrics_labels_and_unknown_functions() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, queue) (rate(a_seconds_bucket{queue=~"x.{1}",'
        ' kind!="by (z)"}[$__rate_interval]))) / ignoring(kind) b_total offset 5m > 1e3'
    )
    assert selected(expr) == ({"a_seconds_bucket", "b_total"}, {"le", "queue", "kind"})
    with pytest.raises(AssertionError, match="not a PromQL function"):
        selected("rates(a_total[1m])")


def test_there_is_a_dashboard() -> None:
    assert DASHBOARDS, "no dashboard under observability/grafana/dashboards"


def test_every_query_selects_metrics_the_processes_export(dashboard: dict[str, Any]) -> None:
    known = {**exported(), **PROMETHEUS_SERIES}
    for panel in panels(dashboard):
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names, labels = selected(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} selects no metric"
            unknown = names - known.keys()
            assert not unknown, f"{panel['title']}: no process exports {sorted(unknown)}"
            available = set().union(*(known[name] for name in names)) | TARGET_LABELS
            assert labels <= available, (
                f"{panel['title']}: {sorted(labels - available)} label none of {sorted(names)}"
            )


def test_the_dashboard_shows_what_an_operator_looks_at_first(dashboard: dict[str, Any]) -> None:
    titles = [panel["title"] for panel in panels(dashboard)]
    assert len(titles) == len(set(titles)), "two panels share a title"
    assert set(titles) >= REQUIRED_PANELS, sorted(REQUIRED_PANELS - set(titles))
    for panel in panels(dashboard):
        assert panel.get("description"), f"{panel['title']!r} does not say what it shows"


def test_the_panels_read_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    provisioned = {
        source["uid"]
        for path in sorted((GRAFANA / "provisioning" / "datasources").glob("*.yml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    }
    for panel in panels(dashboard):
        for holder in (panel, *panel["targets"]):
            assert holder["datasource"]["uid"] in provisioned, panel["title"]
