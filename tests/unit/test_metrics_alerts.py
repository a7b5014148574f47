"""The example alert rules in etc/prometheus cannot rot: every spawnflow_ name they use exists.

promtool is not installed on the CI hosts (the Debian package pulls in a
whole Prometheus server), so the rule file is checked here: its YAML shape
as Prometheus reads it, and each metric name against what an agent exports.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import spawnflow.conf
from spawnflow.engine.log_retry import LogWaits
from spawnflow.engine.metrics import AgentMetrics

RULES = Path(__file__).resolve().parents[2] / "etc" / "prometheus" / "spawnflow-alerts.yml"
NAME = re.compile(r"\bspawnflow_[a-z0-9_]+\b")
PROMETHEUS_OWN = {"up"}  # a target's scrape health, Prometheus' own
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported() -> set[str]:
    """Every sample name an agent's /metrics shows (a counter's with _total)."""
    conf = spawnflow.conf.load([])
    registry = AgentMetrics(conf, LogWaits(conf)).registry
    names = set()
    for family in registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def _rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_have_the_shape_prometheus_reads():
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"], rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
    # What the operations guide promises the file covers.
    for wanted in (
        "BuildStuck",
        "BuildsFailing",
        "DatabaseDown",
        "LeaseNotRenewed",
        "QueueGrowing",
    ):
        assert "Spawnflow" + wanted in names


def test_every_metric_the_rules_use_is_exported():
    known = exported()
    used = {name for rule in _rules() for name in NAME.findall(rule["expr"])}
    assert used, "no spawnflow_ metric in the rules?"
    assert used <= known, f"not exported by the agent: {sorted(used - known)}"
    others = {
        word
        for rule in _rules()
        for word in re.findall(r"\b([a-z_]+)\{", rule["expr"])
        if not word.startswith("spawnflow_")
    }
    assert others <= PROMETHEUS_OWN
