"""The serving benchmarks find what they run: `make bench-load` reads its locust scenarios by path, a path the
layout can move without any import failing."""

from __future__ import annotations

import ast

from handlers.benchmarks.capacity import LOCUSTFILE, SCENARIOS


def test_bench_load_finds_the_locust_users_it_names():
    assert LOCUSTFILE.is_file(), LOCUSTFILE
    classes = {
        node.name for node in ast.walk(ast.parse(LOCUSTFILE.read_text())) if isinstance(node, ast.ClassDef)
    }
    assert set(SCENARIOS.values()) <= classes, (SCENARIOS, classes)
