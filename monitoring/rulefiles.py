"""The Prometheus rule files in ``monitoring/rules``, read as plain records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from monitoring.contract import MONITORING_DIR

RULES_DIR = MONITORING_DIR / "rules"


@dataclass(frozen=True)
class Rule:
    file: Path
    group: str
    kind: str  # "record" or "alert"
    name: str
    expr: str
    duration: str | None = None  # the alert's `for`
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    return sorted(rules_dir.glob("*.yaml"))


def load_rules(rules_dir: Path = RULES_DIR) -> list[Rule]:
    rules = []
    for path in rule_files(rules_dir):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for entry in group["rules"]:
                kind = "record" if "record" in entry else "alert"
                rules.append(
                    Rule(
                        file=path,
                        group=group["name"],
                        kind=kind,
                        name=entry[kind],
                        expr=entry["expr"].strip(),
                        duration=entry.get("for"),
                        labels=entry.get("labels", {}),
                        annotations=entry.get("annotations", {}),
                    )
                )
    return rules


def recorded_names(rules_dir: Path = RULES_DIR) -> set[str]:
    return {rule.name for rule in load_rules(rules_dir) if rule.kind == "record"}


__all__ = ["RULES_DIR", "Rule", "load_rules", "recorded_names", "rule_files"]
