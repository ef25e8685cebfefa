"""Locust scenarios for the NeuroViT service (headless, or locust's web UI on http://127.0.0.1:8089).

    locust -f handlers/benchmarks/load/locustfile.py MixedUser      # web UI, against `make serve`
    locust -f handlers/benchmarks/load/locustfile.py --headless -u 8 -r 8 -t 60s --p95-objective-ms 500 \
        MixedUser
    make load-test                                               # the same, with CSV + HTML report

User classes (name one or more; with none, every class runs):

- ``PredictUser``: plain predictions only (the capacity baseline).
- ``MixedUser``: the realistic mix, by task weight: 70 % plain predictions (raw bytes, some as JSON), 15 %
  with attention rollout, 10 % with the class heat map, 5 % bad inputs that must be refused with a 4xx
  (anything else counts as a failure).

Bodies follow the server's envelope (``--envelope``; see ``payloads.py``): ``none`` for ``make serve``,
``kserve`` sends every request of the same mix as a KServe v1 body, to a TorchServe started with
``TS_SERVICE_ENVELOPE=kserve`` or to the KServe runtime (``make serve RUNTIME=kserve``, no token). Every
answer is validated against ``handlers/response.schema.json``.

Users send their next request as soon as the last is answered (``--think-time-s 0``), so the user count is
the number of requests in flight: the quantity KServe's ``containerConcurrency`` limits. Host, model name,
token (or TorchServe's key file), envelope and images come from options or environment variables; the
defaults follow ``make serve``, either runtime (``outputs/serve/serve.json``). ``--p95-objective-ms`` fails
the run (exit status 1) when the p95 of all requests is over it; locust itself exits 1 on any failed
request.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path

from locust import FastHttpUser, events, task
from locust.env import Environment

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also when imported by path
from answers import AnswerChecker  # noqa: E402
from payloads import ENVELOPES, Call, Protocol, bad_inputs, load_images  # noqa: E402

from neurovit.config import MODEL_NAME, OUTPUT_DIR  # noqa: E402

SERVE_STATE = OUTPUT_DIR / "serve" / "serve.json"  # written by `make serve` (handlers/local_service.py)
DEMO_IMAGES = OUTPUT_DIR / "demo-data"
BAD_INPUT = "bad input (4xx expected)"
log = logging.getLogger("neurovit.load")


def _served() -> dict:
    try:
        return json.loads(SERVE_STATE.read_text())
    except (OSError, ValueError):
        return {}


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    served = _served()
    # `make serve RUNTIME=kserve` records no key file (no token) and answers v1 bodies only
    key_file = served.get("key_file") or str(OUTPUT_DIR / "serve" / "key_file.json")
    envelope = "kserve" if served.get("runtime") == "kserve" else "none"
    parser.add_argument(
        "--images",
        default=os.environ.get("NEUROVIT_LOAD_IMAGES", str(DEMO_IMAGES)),
        help="folder of images to send (default: the demo set, generated when missing)",
    )
    parser.add_argument(
        "--model-name",
        default=os.environ.get("NEUROVIT_MODEL_NAME") or served.get("model", MODEL_NAME),
        help="model name in the URL",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("NEUROVIT_TOKEN", ""),
        is_secret=True,
        help="inference token; default: read from --key-file",
    )
    parser.add_argument(
        "--key-file",
        default=os.environ.get("NEUROVIT_KEY_FILE", key_file),
        help="TorchServe's key_file.json (token authorisation); no token is sent when it is missing",
    )
    parser.add_argument(
        "--envelope",
        choices=ENVELOPES,
        default=os.environ.get("NEUROVIT_ENVELOPE", envelope),
        help="none (make serve's TorchServe) or kserve: KServe v1 bodies (TS_SERVICE_ENVELOPE=kserve, or the "
        "KServe runtime: the default after `make serve RUNTIME=kserve`)",
    )
    parser.add_argument(
        "--p95-objective-ms",
        type=float,
        default=float(os.environ.get("NEUROVIT_P95_OBJECTIVE_MS", "0")),
        help="fail the run when the p95 of all requests is over this (0: report only)",
    )
    parser.add_argument("--request-timeout-s", type=float, default=30.0, help="client timeout per request")
    parser.add_argument("--think-time-s", type=float, default=0.0, help="pause between a user's requests")
    parser.add_argument(
        "--summary-file", default="", include_in_web_ui=False, help="write the run's summary JSON here"
    )
    parser.add_argument(
        "--request-log", default="", include_in_web_ui=False, help="write one JSON line per request here"
    )


class LoadRun:
    """What one test run shares between its users: protocol, images, bad inputs, the answer checker; it
    also counts the peak of users and writes the request log (--request-log)."""

    def __init__(self, environment: Environment) -> None:
        options = environment.parsed_options
        token = options.token or _key(Path(options.key_file))
        self.protocol = Protocol(options.envelope, options.model_name, token)
        images_dir = Path(options.images)
        self.images = load_images(images_dir, create_demo=images_dir.resolve() == DEMO_IMAGES.resolve())
        self.faults = [
            (fault, call) for fault in bad_inputs(self.images[0]) if (call := self.protocol.bad(fault))
        ]
        self.checker = AnswerChecker()
        self.prefix = "v1 " if options.envelope == "kserve" else ""
        self.peak_users = 0
        self.events = environment.events
        self.request_log = open(options.request_log, "a") if options.request_log else None
        self.events.spawning_complete.add_listener(self.count_users)
        self.events.request.add_listener(self.log_request)

    def count_users(self, user_count: int, **_) -> None:
        self.peak_users = max(self.peak_users, user_count)

    def log_request(self, name, response_time, response, exception, start_time=None, **_) -> None:
        if self.request_log:
            line = {
                "start": round(start_time or time.time(), 4),
                "ms": round(response_time, 1),
                "name": name,
                "status": getattr(response, "status_code", 0) or 0,
                "ok": exception is None,
                "error": str(exception) if exception else None,
            }
            self.request_log.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self.events.spawning_complete.remove_listener(self.count_users)
        self.events.request.remove_listener(self.log_request)
        if self.request_log:
            self.request_log.close()
            self.request_log = None


def _key(key_file: Path) -> str | None:
    try:
        return json.loads(key_file.read_text())["inference"]["key"]
    except (OSError, ValueError, KeyError):
        return None


@events.test_start.add_listener
def start_run(environment: Environment, **_) -> None:
    """A fresh LoadRun per start (the web UI may change the options between runs)."""
    previous = getattr(environment, "neurovit_run", None)
    if previous:
        previous.close()
    run = environment.neurovit_run = LoadRun(environment)
    options = environment.parsed_options
    auth = "a token" if run.protocol.auth else "no token"
    counts = (len(run.images), len(run.faults), options.envelope, auth)
    log.info("%d images, %d bad inputs, envelope %s, %s", *counts)


@events.quitting.add_listener
def judge_run(environment: Environment, **_) -> None:
    """Summary (printed, and written to --summary-file) and the latency objective's verdict."""
    run = getattr(environment, "neurovit_run", None)
    options = environment.parsed_options
    summary = summarise(environment, run.peak_users if run else 0, options.p95_objective_ms)
    if run:
        run.close()
    log.info("summary: %s", json.dumps(summary))
    if options.summary_file:
        Path(options.summary_file).parent.mkdir(parents=True, exist_ok=True)
        Path(options.summary_file).write_text(json.dumps(summary, indent=2) + "\n")
    if not summary["requests"]:
        log.error("no request was sent: see the errors above")
        environment.process_exit_code = 1
    elif summary["objective_met"] is False:
        log.error("p95 %.0f ms is over the objective of %.0f ms", summary["p95_ms"], options.p95_objective_ms)
        environment.process_exit_code = 1


def summarise(environment: Environment, users: int, objective_ms: float) -> dict:
    stats = environment.stats
    total = stats.total

    def figures(entry) -> dict:
        return {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "rps": round(entry.total_rps, 2),
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p95_ms": entry.get_response_time_percentile(0.95),
            "p99_ms": entry.get_response_time_percentile(0.99),
        }

    p95 = total.get_response_time_percentile(0.95)
    met = None if objective_ms <= 0 or not total.num_requests else p95 <= objective_ms
    return {
        "users": users,
        "envelope": environment.parsed_options.envelope,
        "duration_s": round(max(0.0, (stats.last_request_timestamp or 0) - (total.start_time or 0)), 1),
        **figures(total),
        "max_ms": round(total.max_response_time or 0, 1),
        "p95_objective_ms": objective_ms or None,
        "objective_met": met,
        "per_request": {name: figures(entry) for (name, _method), entry in sorted(stats.entries.items())},
        "failure_reasons": {f"{e.name}: {e.error}": e.occurrences for e in stats.errors.values()},
    }


class NeuroVitUser(FastHttpUser):
    """A client that keeps one request in flight (plus --think-time-s), with a client timeout."""

    abstract = True
    host = _served().get("url", "http://127.0.0.1:8080")

    def __init__(self, environment: Environment) -> None:
        timeout = environment.parsed_options.request_timeout_s
        self.network_timeout = self.connection_timeout = timeout  # read by FastHttpUser's client
        super().__init__(environment)
        self.load: LoadRun = environment.neurovit_run  # set by start_run

    def wait_time(self) -> float:
        return self.environment.parsed_options.think_time_s

    def predict(self, explain: str, name: str, as_json: bool = False) -> None:
        call = self.load.protocol.predict(random.choice(self.load.images), explain, as_json)
        checker = self.load.checker
        with self._post(call, name) as response:
            problem = self._problem(response, lambda answer: checker.prediction_problem(answer, explain))
            self._judge(response, problem)

    def bad_input(self) -> None:
        fault, call = random.choice(self.load.faults)
        checker = self.load.checker
        with self._post(call, BAD_INPUT) as response:
            status = response.status_code
            check = lambda answer: checker.refusal_problem(status, answer)  # noqa: E731
            problem = self._problem(response, check, expect_ok=False)
            self._judge(response, problem and f"{fault.name}: {problem}")

    def _post(self, call: Call, name: str):
        name = self.load.prefix + name
        return self.client.post(
            call.path, data=call.body, headers=call.headers, name=name, catch_response=True
        )

    @staticmethod
    def _judge(response, problem: str | None) -> None:
        if problem:
            response.failure(problem)
        else:
            response.success()

    def _problem(self, response, check, expect_ok: bool = True) -> str | None:
        """None when the answer is right; else a message that starts with the HTTP status."""
        status = response.status_code
        if not status:
            return f"no answer: {response.error}"  # connection refused, reset or client timeout
        try:
            body = json.loads(response.content or b"")
        except ValueError:
            body = None
        if expect_ok and status != 200:
            detail = (body.get("message") or body.get("error")) if isinstance(body, dict) else None
            return f"HTTP {status}: {detail or (response.text or '')[:200]}"
        if body is None:
            return f"HTTP {status}: the body is not JSON: {(response.text or '')[:200]!r}"
        try:
            answer = self.load.protocol.answer(body)
        except (KeyError, IndexError, TypeError):
            return f"HTTP {status}: no answer in the {self.load.protocol.envelope} body: {str(body)[:200]}"
        problem = check(answer)
        return f"HTTP {status}: {problem}" if problem else None


class PredictUser(NeuroVitUser):
    """Plain predictions only: one image in, class and calibrated probabilities out."""

    @task
    def predict_plain(self) -> None:
        self.predict("none", "predict")


class MixedUser(NeuroVitUser):
    """The realistic mix; weights sum to 20, so each unit is 5 % of the requests."""

    @task(10)
    def predict_plain(self) -> None:
        self.predict("none", "predict")

    @task(4)
    def predict_json(self) -> None:
        self.predict("none", "predict (JSON body)", as_json=True)

    @task(3)
    def with_rollout(self) -> None:
        self.predict("rollout", "rollout")

    @task(2)
    def with_heatmap(self) -> None:
        self.predict("heatmap", "heatmap", as_json=True)

    @task(1)
    def refused(self) -> None:
        self.bad_input()
