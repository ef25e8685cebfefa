"""The local Prometheus set-up of `make monitor` / `make drift-demo` and the live tests
(monitoring.local_prometheus): the config it writes and the time-compressed demo rules are valid for
Prometheus and keep every rule."""

from __future__ import annotations

import re

import yaml

from monitoring import local_prometheus


def test_written_config_scrapes_the_given_target_with_every_rule_file(tmp_path, promtool):
    config = local_prometheus.write_config(tmp_path, "127.0.0.1:18082", interval="1s")
    document = yaml.safe_load(config.read_text())
    targets = [t for job in document["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    assert targets == ["127.0.0.1:18082"]
    assert document["global"]["scrape_interval"] == "1s"
    assert document["rule_files"] == [str(path) for path in local_prometheus.rule_files()]
    assert any("neurovit" in job["job_name"] for job in document["scrape_configs"])  # the alerts select it
    promtool("check", "config", str(config))


def test_compressed_rules_shorten_windows_and_holds_but_keep_every_rule(tmp_path, promtool):
    copies = local_prometheus.compress_rules(tmp_path, window="2m", hold="10s")
    assert [copy.name for copy in copies] == [path.name for path in local_prometheus.rule_files()]
    for original, copy in zip(local_prometheus.rule_files(), copies, strict=True):
        before, after = yaml.safe_load(original.read_text()), yaml.safe_load(copy.read_text())
        rules_before = [r for g in before["groups"] for r in g["rules"]]
        rules_after = [r for g in after["groups"] for r in g["rules"]]
        assert [r.get("record") or r.get("alert") for r in rules_after] == [
            r.get("record") or r.get("alert") for r in rules_before
        ]
        for rule in rules_after:
            assert set(re.findall(r"\[([^\]]+)\]", rule["expr"])) <= {"2m"}, rule["expr"]
            assert rule.get("for", "10s") == "10s"
    promtool("check", "rules", *map(str, copies))
