"""Small, deliberately syntactic PromQL helpers: the metric names an expression selects, Grafana variable
substitution, and the "signal" form of an alert condition.

They cover the PromQL the rules and dashboards here are written in (a test runs them over all of it);
they are not a PromQL parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{[^}]*\}")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
     "inf", "nan", "atan2"}
)  # fmt: skip
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
# A comparison against a number literal; `=~`/`!~` are regex matchers and never followed by a digit here.
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(\s*)(?=[-+]?(?:\d|\.\d|Inf\b|NaN\b))")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by ``expr`` (recording rule names included; functions and keywords not)."""
    text = _STRING.sub('""', expr)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    text = _MATCHERS.sub("", text)
    return {name for name, call in _IDENTIFIER.findall(text) if not call and name.lower() not in _KEYWORDS}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana's ``$name`` / ``${name}`` / ``${name:format}`` with ``values[name]``.

    Raises KeyError for a variable without a value, so no query reaches Prometheus half-templated.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in: {expr}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def as_signal(expr: str) -> str:
    """The alert condition with every comparison against a number turned into ``bool``.

    ``x > 0.5`` keeps only the series over the threshold (nothing while all is well); ``x > bool 0.5``
    keeps every series with 0 or 1, so it returns data whenever the metrics behind the alert exist.
    """
    return _COMPARISON.sub(lambda m: f"{m.group(1)} bool{m.group(2) or ' '}", expr)


__all__ = ["as_signal", "metric_names", "substitute"]
