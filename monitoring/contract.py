"""The metric contract, read from ``monitoring/METRICS.md``: rules, dashboards and tests share one list.

NeuroViT's names come from the tables (first cell, back-quoted); a table under a heading that says
"histograms" is one of histograms, whose series are ``_bucket``/``_sum``/``_count``. TorchServe's names are
the back-quoted words of the "TorchServe" section that ``handlers/metrics.yaml`` declares as frontend
metrics (the section's other back-quoted words are label names). The KServe runtime's own names are the first
cells of the "KServe" section's table (a row whose kind says "histogram" stands for its three series).
A query that reads one runtime's own series reads the other's with ``or``: ``own_series(runtime)`` says
which names a scrape of that runtime must have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

MONITORING_DIR = Path(__file__).resolve().parent
METRICS_MD = MONITORING_DIR / "METRICS.md"
TORCHSERVE_METRICS_YAML = MONITORING_DIR.parent / "handlers" / "metrics.yaml"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
SCRAPE_METRICS = frozenset({"up"})  # Prometheus's own per-target series

_TABLE_NAME = re.compile(r"^\|\s*`(neurovit_\w+)`\s*\|", re.MULTILINE)
_TABLE_ROW = re.compile(r"^\|\s*`(\w+)`\s*\|([^|]*)\|", re.MULTILINE)  # first cell back-quoted, then kind
RUNTIMES = ("torchserve", "kserve")
_BACKQUOTED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


@dataclass(frozen=True)
class Contract:
    neurovit: frozenset[str]  # metric names as documented
    histograms: frozenset[str]  # the subset that are histograms
    torchserve: frozenset[str]  # TorchServe's own names the rules and dashboards may use
    features: tuple[str, ...]  # values of the drift label `feature`
    kserve: frozenset[str] = frozenset()  # the KServe runtime's own series names (histograms expanded)

    @property
    def series_names(self) -> frozenset[str]:
        """Every series name a query may select: histograms by their three series, plus `up`."""
        histogram_series = {name + suffix for name in self.histograms for suffix in HISTOGRAM_SUFFIXES}
        plain = self.neurovit - self.histograms
        return frozenset(plain | histogram_series | self.torchserve | self.kserve | SCRAPE_METRICS)

    def own_series(self, runtime: str) -> frozenset[str]:
        """The runtime-specific names a scrape of ``runtime`` has (and one of the other runtime lacks)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
        return self.torchserve if runtime == "torchserve" else self.kserve


def _sections(text: str) -> dict[str, str]:
    """``{"## heading": body}`` for each second-level section."""
    parts = re.split(r"^(## .*)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _torchserve_frontend_names(metrics_yaml: Path) -> set[str]:
    config = yaml.safe_load(metrics_yaml.read_text())
    return {entry["name"] for kind in config.get("ts_metrics", {}).values() for entry in kind}


def _kserve_series(body: str) -> set[str]:
    names = set()
    for name, kind in _TABLE_ROW.findall(body):
        suffixes = HISTOGRAM_SUFFIXES if "histogram" in kind else ("",)
        names |= {name + suffix for suffix in suffixes}
    return names


def _features(text: str) -> tuple[str, ...]:
    match = re.search(r"^`feature` values:(.*?)\.$", text, flags=re.MULTILINE | re.DOTALL)  # one sentence
    if not match:
        raise ValueError(f"{METRICS_MD}: no '`feature` values:' paragraph")
    return tuple(_BACKQUOTED.findall(match.group(1)))


@cache
def load_contract(metrics_md: Path = METRICS_MD, metrics_yaml: Path = TORCHSERVE_METRICS_YAML) -> Contract:
    text = metrics_md.read_text()
    neurovit: set[str] = set()
    histograms: set[str] = set()
    torchserve_words: set[str] = set()
    kserve: set[str] = set()
    for heading, body in _sections(text).items():
        names = set(_TABLE_NAME.findall(body))
        neurovit |= names
        if "histogram" in heading.lower():
            histograms |= names
        if "torchserve" in heading.lower():
            torchserve_words |= set(_BACKQUOTED.findall(body))
        if "kserve" in heading.lower():
            kserve |= _kserve_series(body)
    torchserve = torchserve_words & _torchserve_frontend_names(metrics_yaml)
    if not neurovit or not torchserve or not kserve:
        raise ValueError(f"{metrics_md}: found no metric tables, or no TorchServe or KServe section")
    return Contract(
        frozenset(neurovit), frozenset(histograms), frozenset(torchserve), _features(text), frozenset(kserve)
    )


__all__ = ["RUNTIMES", "Contract", "METRICS_MD", "MONITORING_DIR", "load_contract"]
