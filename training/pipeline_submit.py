"""Submit the compiled pipeline (training/pipeline.yaml) to Kubeflow Pipelines: ``neurovit pipeline submit``.

Connection and run settings come from the environment, so nothing secret is typed on a command line:

| variable | meaning |
|---|---|
| ``KFP_HOST`` | required: the KFP API, e.g. ``http://localhost:8080`` (port-forward of ml-pipeline-ui) |
| ``KFP_TOKEN`` | a bearer token (``kubectl create token <service account>``), or |
| ``KFP_TOKEN_PATH`` | a file holding one (a projected ServiceAccount token inside a pod), or |
| ``KFP_COOKIES`` | a session cookie (``authservice_session=...``) for Kubeflow behind Dex |
| ``KFP_NAMESPACE`` | the Kubeflow profile namespace runs go to (multi-user installs) |
| ``KFP_EXPERIMENT`` | experiment name (default ``neurovit``) |
| ``NEUROVIT_STORE_URI`` | required pipeline parameter ``store_uri``, e.g. ``s3://neurovit`` |
| ``NEUROVIT_DATA_URI`` | pipeline parameter ``data_uri`` (default ``demo``, with its own intensity window) |

Further pipeline parameters: ``--param name=value`` (repeatable): ``--param epochs=30 --param train_gpus=0``.
Prints the run's id and its page in the Kubeflow UI. Missing settings or an unreachable endpoint raise
SubmitError (``neurovit pipeline submit``: one ``error:`` line, exit status 1).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from neurovit.errors import NeuroVitError
from training.pipeline import data_parameters

PIPELINE_FILE = Path(__file__).with_name("pipeline.yaml")
DEFAULT_EXPERIMENT = "neurovit"


class SubmitError(NeuroVitError, ValueError):
    """The run cannot be submitted as configured."""


def parse_params(pairs: list[str]) -> dict[str, object]:
    """``name=value`` pairs; integers and floats become numbers (the pipeline's parameters are typed)."""
    params: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise SubmitError(f"--param {pair!r} is not name=value")
        value: object = text
        for number in (int, float):
            try:
                value = number(text)
                break
            except ValueError:
                continue
        params[name] = value
    return params


def run_arguments(env: Mapping[str, str], extra: dict[str, object]) -> dict[str, object]:
    """The pipeline's parameters: store_uri (required), data_uri and what it calls for, then ``--param``s."""
    store_uri = env.get("NEUROVIT_STORE_URI", "").strip()
    if not store_uri:
        raise SubmitError("NEUROVIT_STORE_URI is not set: the store runs publish to, e.g. s3://neurovit")
    data_uri = env.get("NEUROVIT_DATA_URI", "demo")
    return {"store_uri": store_uri, "data_uri": data_uri, **data_parameters(data_uri), **extra}


def client_settings(env: Mapping[str, str]) -> dict[str, object]:
    """Keyword arguments of ``kfp.Client`` from the environment."""
    host = env.get("KFP_HOST", "").strip()
    if not host:
        raise SubmitError(
            "KFP_HOST is not set: the Kubeflow Pipelines endpoint, e.g. http://localhost:8080 after "
            "`kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80`"
        )
    settings: dict[str, object] = {"host": host}
    token_path = env.get("KFP_TOKEN_PATH", "").strip()
    if env.get("KFP_TOKEN"):
        settings["existing_token"] = env["KFP_TOKEN"]
    elif token_path:
        if not Path(token_path).is_file():
            raise SubmitError(f"KFP_TOKEN_PATH {token_path} is not a file")
        from kfp.client import ServiceAccountTokenVolumeCredentials

        settings["credentials"] = ServiceAccountTokenVolumeCredentials(path=token_path)
    if env.get("KFP_COOKIES"):
        settings["cookies"] = env["KFP_COOKIES"]
    if env.get("KFP_NAMESPACE"):
        settings["namespace"] = env["KFP_NAMESPACE"]
    return settings


def submit(client, arguments: dict[str, object], env: Mapping[str, str], pipeline_file: Path = PIPELINE_FILE):
    """Create one run of ``pipeline_file``; returns kfp's RunPipelineResult."""
    return client.create_run_from_pipeline_package(
        str(pipeline_file),
        arguments=arguments,
        experiment_name=env.get("KFP_EXPERIMENT", DEFAULT_EXPERIMENT),
        namespace=env.get("KFP_NAMESPACE") or None,
    )


def submit_from_env(
    params: list[str], env: Mapping[str, str] | None = None, pipeline_file: Path = PIPELINE_FILE
) -> dict:
    """Submit one run configured by ``env`` (default the environment) and ``--param`` pairs; prints the run's
    page and returns its id and URL. SubmitError for missing settings or an endpoint that refuses."""
    env = os.environ if env is None else env
    settings = client_settings(env)
    arguments = run_arguments(env, parse_params(params))
    if not Path(pipeline_file).is_file():
        raise SubmitError(f"{pipeline_file} is missing: run `make pipeline-compile`")
    import kfp

    # kfp warns on every client that it needs KFP 2.0.0-beta.2 or later: noise for a one-shot command.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.")
    try:
        result = submit(kfp.Client(**settings), arguments, env, pipeline_file)
    except Exception as error:  # noqa: BLE001 - kfp raises urllib3, HTTP and API errors alike: report, no traceback
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SubmitError(f"cannot submit to {env.get('KFP_HOST')}: {reason}") from error
    url = f"{env['KFP_HOST'].rstrip('/')}/#/runs/details/{result.run_id}"
    print(f"run {result.run_id} submitted: {url}")
    return {"run_id": result.run_id, "url": url}
