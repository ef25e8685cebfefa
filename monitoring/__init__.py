"""NeuroViT monitoring: Prometheus rules, Grafana dashboards and the helpers that check them.

The metric contract is ``monitoring/METRICS.md``; ``monitoring.queries.all_queries`` lists every PromQL
expression the rules and dashboards use, for tests that evaluate them against a live Prometheus.
"""
