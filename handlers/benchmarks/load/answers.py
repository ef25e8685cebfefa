"""Checks every load answer against ``handlers/response.schema.json``, read when the run starts.

The schema file is the contract: fields added to the answers (and to the schema) pass without a change here,
and an answer that drifts from the schema fails the run. On top of the schema, a prediction must carry
exactly the maps it asked for and a refusal's ``code`` must be its HTTP status.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "response.schema.json"  # handlers/
MAPS = {"none": (), "rollout": ("rollout",), "heatmap": ("heatmap",), "all": ("heatmap", "rollout")}


class AnswerChecker:
    """Validates predictions and refusals; each check returns None when good, else what is wrong."""

    def __init__(self, schema_file: Path = SCHEMA_FILE) -> None:
        schema = json.loads(Path(schema_file).read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        defs = schema.get("$defs", {})
        if "prediction" not in defs or "error" not in defs:
            raise ValueError(f"{schema_file} has no $defs/prediction and $defs/error to check answers with")
        # Each kind checked on its own (the root's oneOf dropped), so an error names the real fault rather
        # than "is not valid under any of the given schemas".
        root = {key: value for key, value in schema.items() if key != "oneOf"}
        self.prediction = jsonschema.Draft202012Validator({**root, "$ref": "#/$defs/prediction"})
        self.error = jsonschema.Draft202012Validator({**root, "$ref": "#/$defs/error"})

    def prediction_problem(self, answer: object, explain: str) -> str | None:
        problem = _first_error(self.prediction, answer)
        if problem:
            return f"answer does not match the schema: {problem}"
        got, wanted = sorted(answer["explanations"]), sorted(MAPS[explain])
        if got != wanted:
            return f"asked for {explain!r}, got maps {got}"
        return None

    def refusal_problem(self, status: int, answer: object) -> str | None:
        if not 400 <= status < 500:
            return f"expected a 4xx refusal, got HTTP {status}"
        problem = _first_error(self.error, answer)
        if problem:
            return f"refusal does not match the schema: {problem}"
        if answer["code"] != status:
            return f"refusal says code {answer['code']} but HTTP status is {status}"
        return None


def _first_error(validator: jsonschema.Draft202012Validator, instance: object) -> str | None:
    error = next(iter(validator.iter_errors(instance)), None)
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path) or "(root)"
    return f"{where}: {error.message[:200]}"
