"""The serving benchmarks find what they run: `make bench-load` reads its locust scenarios by path, a path the
layout can move without any import failing."""

from __future__ import annotations

import ast
import importlib.util

from handlers.benchmarks.capacity import LOCUSTFILE, SCENARIOS


def test_bench_load_finds_the_locust_users_it_names():
    assert LOCUSTFILE.is_file(), LOCUSTFILE
    classes = {
        node.name for node in ast.walk(ast.parse(LOCUSTFILE.read_text())) if isinstance(node, ast.ClassDef)
    }
    assert set(SCENARIOS.values()) <= classes, (SCENARIOS, classes)


def test_the_load_answers_are_checked_against_the_served_schema():
    spec = importlib.util.spec_from_file_location("answers", LOCUSTFILE.with_name("answers.py"))
    answers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(answers)
    assert answers.SCHEMA_FILE.resolve() == (LOCUSTFILE.parents[2] / "response.schema.json").resolve()
    assert answers.SCHEMA_FILE.is_file()
