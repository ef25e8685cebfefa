"""The main job as a Kubeflow Pipelines v2 pipeline, ``neurovit-training``.

One lightweight Python component per stage of ``training.stages``, wired by typed artifacts::

    prepare_data -> analyze -> split -> train (GPU) -> evaluate -> publish

Every component runs on the training image (``training/Dockerfile``), which holds NeuroViT, its pinned
dependencies and kfp: components import the project inside their bodies and install nothing at run time.
The stage code is the one the CLI runs, so a pipeline run and ``neurovit train`` train the same model.

Command line (docs/cli.md)::

    neurovit pipeline compile [--output training/pipeline.yaml]
    neurovit pipeline run --store <folder or s3://...> [--data-uri demo] [--epochs N]
    neurovit pipeline submit [--param name=value ...]

``compile`` writes the pipeline spec (commit it; a unit test fails when it is stale);
``NEUROVIT_TRAINING_IMAGE`` overrides the image at compile time. ``run`` runs the pipeline on this
machine with kfp's subprocess runner in the current environment, then verifies the published version.

Resources: every task has CPU and memory requests and limits (``RESOURCES``); the train task asks for
``train_gpus`` GPUs of type ``nvidia.com/gpu`` (a pipeline parameter, default 1; 0 trains on CPU). The
count is a runtime parameter, so the spec carries it in ``resourceCount``, which the KFP backend resolves
when it builds the pod; a backend too old to read that field would start the task without a GPU. The local
runner ignores resources and accelerators.

Store access on a cluster: the prepare_data and publish tasks read the store's address (``NEUROVIT_S3_*``)
from the ConfigMap ``store_config`` and the ``AWS_*`` keys from the Secret ``store_secret`` (pipeline
parameters, default the objects that manifests/ and helm/ create), as environment through kfp-kubernetes.
Both are optional, so a run against another store starts without them; the local runner ignores them.
"""

import os
import warnings
from pathlib import Path

from kfp import compiler, dsl, kubernetes
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

PIPELINE_NAME = "neurovit-training"
PIPELINE_FILE = Path(__file__).with_name("pipeline.yaml")
DEFAULT_TRAINING_IMAGE = "ghcr.io/neurovit/neurovit-train:0.1.0"
# Read once, at import: the image is baked into each component when the module is loaded.
TRAINING_IMAGE = os.environ.get("NEUROVIT_TRAINING_IMAGE", DEFAULT_TRAINING_IMAGE)
GPU_RESOURCE = "nvidia.com/gpu"
# What the cluster objects (manifests/, helm/) provide to the tasks that talk to the store.
STORE_SECRET = "neurovit-s3"
STORE_CONFIG = "neurovit-store"
STORE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
STORE_CONFIG_KEYS = ("NEUROVIT_S3_ENDPOINT", "NEUROVIT_S3_SECURE", "NEUROVIT_S3_REGION")

# Requests and limits per task (Kubernetes quantities). Sized for the public brain-tumour MRI sets
# (~7,000 slices held in memory as 128 px uint8); raise them for larger data.
RESOURCES = {
    "prepare-data": {"cpu": ("1", "2"), "memory": ("2Gi", "4Gi")},
    "analyze": {"cpu": ("2", "4"), "memory": ("4Gi", "8Gi")},
    "split": {"cpu": ("1", "2"), "memory": ("2Gi", "4Gi")},
    "train": {"cpu": ("4", "8"), "memory": ("8Gi", "16Gi")},
    "evaluate": {"cpu": ("2", "4"), "memory": ("4Gi", "8Gi")},
    "publish": {"cpu": ("500m", "1"), "memory": ("1Gi", "2Gi")},
}

# The training image already holds kfp and every dependency: no pip install when a task starts.
neurovit_component = dsl.component(
    base_image=TRAINING_IMAGE, packages_to_install=[], install_kfp_package=False
)


@neurovit_component
def prepare_data(data_uri: str, demo_images_per_class: int, dataset: Output[Dataset]):
    """Materialise the dataset: "demo" (or empty) generates the demo set, s3://bucket/prefix downloads the
    prefix (credentials as for the artifact store), anything else is a local folder to copy."""
    import shutil
    from pathlib import Path, PurePosixPath
    from urllib.parse import urlsplit

    from neurovit.data.demo import generate_demo_dataset
    from neurovit.data.layout import discover
    from neurovit.store import redact_uri

    target = Path(dataset.path)
    if redact_uri(data_uri) != data_uri:  # it would be printed and kept in the run's metadata
        raise ValueError(
            f"data_uri {redact_uri(data_uri)} carries credentials: the store's AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY are used instead"
        )

    def download_prefix(uri: str) -> int:
        # The store's own client factory: same environment variables, timeouts and TLS settings.
        from neurovit.store import s3_client_from_env

        parsed = urlsplit(uri)
        if not parsed.netloc:
            raise ValueError(f"no bucket in {uri!r}: expected s3://<bucket>[/<prefix>]")
        prefix = parsed.path.strip("/")
        prefix = f"{prefix}/" if prefix else ""
        client, _ = s3_client_from_env()
        count = 0
        for item in client.list_objects(parsed.netloc, prefix=prefix, recursive=True):
            if item.is_dir:
                continue
            relative = PurePosixPath(item.object_name[len(prefix) :])
            if not relative.parts or relative.is_absolute() or ".." in relative.parts:
                raise ValueError(f"refusing object key {item.object_name!r}: it leaves the dataset folder")
            client.fget_object(parsed.netloc, item.object_name, str(target.joinpath(*relative.parts)))
            count += 1
        if not count:
            raise FileNotFoundError(f"no objects under {uri}")
        return count

    source = data_uri.strip()
    if source in ("", "demo"):
        generate_demo_dataset(target, n_per_class=demo_images_per_class, seed=0)
        origin = f"demo ({demo_images_per_class} images per class, seed 0)"
    elif source.startswith("s3://"):
        print(f"downloaded {download_prefix(source)} objects from {source}")
        origin = source
    else:
        folder = Path(urlsplit(source).path if source.startswith("file://") else source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"data_uri {data_uri!r} is not 'demo', an s3:// URI or a folder")
        shutil.copytree(folder, target, dirs_exist_ok=True)
        origin = str(folder.resolve())

    index = discover(target)
    dataset.metadata.update(
        {"source": origin, "layout": index.layout, "classes": index.classes, "files": len(index.records)}
    )
    print(f"dataset from {origin}: {len(index.records)} files, classes {index.classes}")


@neurovit_component
def analyze(dataset: Input[Dataset], report: Output[HTML], analysis: Output[Artifact]):
    """Dataset report (counts, sizes, intensities, corrupt files, duplicates, leaks) and fingerprints."""
    import shutil
    from pathlib import Path

    from training import stages

    summary = stages.analyze_stage(dataset.path, analysis.path)
    shutil.copyfile(Path(analysis.path) / "report.html", report.path)
    analysis.metadata.update(
        {
            "files": summary["dataset"]["files"],
            "corrupt": summary["dataset"]["corrupt"],
            "exact_duplicate_groups": summary["duplicates"]["exact_groups"],
            "near_duplicate_groups": summary["duplicates"]["near_groups"],
            "cross_split_leaks": summary["leaks"]["groups"],
        }
    )


@neurovit_component
def split(dataset: Input[Dataset], analysis: Input[Artifact], split_plan: Output[Artifact], seed: int):
    """Leak-free train/val/test split (split.json), reusing the analysis' fingerprints."""
    from training import stages

    plan = stages.split_stage(dataset.path, analysis.path, split_plan.path, seed=seed)
    split_plan.metadata.update(
        {
            "fingerprint": plan.fingerprint,
            "classes": plan.classes,
            "sizes": {name: sum(by_class.values()) for name, by_class in plan.counts.items()},
            "dropped_leaking": plan.dropped,
            "excluded_corrupt": plan.excluded_corrupt,
        }
    )


@neurovit_component
def train(
    dataset: Input[Dataset],
    split_plan: Input[Artifact],
    model: Output[Model],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    intensity_window: str,
    time_budget_s: float,
    seed: int,
    amp: str,
    base_model: str,
):
    """Train on the split's train part and keep the weights with the best validation accuracy.

    The GPU recipe (``training.recipes.gpu_recipe``: 128 px, the wide stem) with the given schedule.
    ``time_budget_s`` <= 0 means no budget; ``learning_rate`` <= 0 the recipe's (1e-3 from scratch, 1e-4
    fine-tuning); ``base_model`` "" trains from scratch. Uses CUDA when the task has a GPU.
    """
    import shutil
    import tempfile
    from pathlib import Path

    import torch

    from training import stages
    from training.recipes import gpu_recipe, learning_rate_for

    config = gpu_recipe(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate_for(base_model, learning_rate if learning_rate > 0 else None),
        patience=patience,
        intensity_window=intensity_window,
        time_budget_s=time_budget_s if time_budget_s > 0 else None,
        seed=seed,
        amp=amp,
        base_model=base_model or None,
    )
    with tempfile.TemporaryDirectory(prefix="neurovit-train-") as work:
        # One line per epoch in the task log (a bar only on a terminal: neurovit.progress).
        result = stages.train_stage(dataset.path, split_plan.path, Path(work) / "train", config)
        shutil.copytree(result.best_dir, model.path, dirs_exist_ok=True)
    model.metadata.update(
        {
            "framework": f"pytorch {torch.__version__}",
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "best_val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "train_seconds": round(result.train_seconds, 1),
            "images_per_second": round(result.images_per_second, 1),
            "amp": amp,
            "base_model": base_model or None,
        }
    )
    print(
        f"best val accuracy {result.best_val_accuracy:.3f} at epoch {result.best_epoch} "
        f"({result.epochs_run} epochs, {result.train_seconds:.0f}s)"
    )


@neurovit_component
def evaluate(
    dataset: Input[Dataset],
    split_plan: Input[Artifact],
    model: Input[Model],
    calibrated_model: Output[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
):
    """Fit the temperature and the confidence map on val, evaluate on test; the calibrated model carries
    both."""
    import shutil
    import tempfile
    from pathlib import Path

    from training import stages

    with tempfile.TemporaryDirectory(prefix="neurovit-evaluate-") as work:
        results = stages.calibrate_and_evaluate_stage(
            dataset.path, split_plan.path, model.path, Path(work) / "evaluation", Path(work) / "model"
        )
        shutil.copytree(Path(work) / "evaluation", evaluation.path, dirs_exist_ok=True)
        shutil.copytree(Path(work) / "model", calibrated_model.path, dirs_exist_ok=True)

    logged = ("accuracy", "macro_f1", "ece", "ece_before_calibration", "ece_temperature_only", "temperature")
    for name in logged:
        metrics.log_metric(name, float(results[name]))
    confusion.log_confusion_matrix(results["class_names"], results["confusion_matrix"])
    evaluation.metadata.update({"evaluated_on": results["evaluated_on"], "n": results["n"]})
    calibrated_model.metadata.update(
        {
            "temperature": float(results["temperature"]),
            "confidence_map": results["confidence_map"] is not None,
            "evaluated_on": results["evaluated_on"],
            "accuracy": float(results["accuracy"]),
            "macro_f1": float(results["macro_f1"]),
        }
    )


@neurovit_component
def publish(
    calibrated_model: Input[Model],
    evaluation: Input[Artifact],
    split_plan: Input[Artifact],
    analysis: Input[Artifact],
    store_uri: str,
    model_name: str,
    model_card: Output[Markdown],
) -> str:
    """Publish model, evaluation, split, analysis and the model card as one checksummed version; returns its
    URI. The card (MODEL_CARD.md of the version) is also this task's Markdown artifact, shown in the UI."""
    import shutil
    import tempfile
    from pathlib import Path

    from training import stages
    from training.model_card import MODEL_CARD_MARKDOWN

    with tempfile.TemporaryDirectory(prefix="neurovit-publish-") as work:
        version_uri = stages.publish_stage(
            store_uri,
            model_name,
            calibrated_model.path,
            evaluation.path,
            split_plan.path,
            analysis.path,
            Path(work) / "staging",
        )
        shutil.copyfile(Path(work) / "staging" / MODEL_CARD_MARKDOWN, model_card.path)
    model_card.metadata.update({"version_uri": version_uri})
    print(f"published {version_uri}")
    return version_uri


def _sized(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """Apply the RESOURCES entry of ``name`` to ``task`` and name it in the UI."""
    (cpu_request, cpu_limit), (memory_request, memory_limit) = (
        RESOURCES[name]["cpu"],
        RESOURCES[name]["memory"],
    )
    return (
        task.set_display_name(name)
        .set_cpu_request(cpu_request)
        .set_cpu_limit(cpu_limit)
        .set_memory_request(memory_request)
        .set_memory_limit(memory_limit)
    )


def _with_store_access(task: dsl.PipelineTask, store_secret, store_config) -> dsl.PipelineTask:
    """Give ``task`` the store's credentials and address from the cluster, as environment variables."""
    kubernetes.use_secret_as_env(
        task,
        secret_name=store_secret,
        secret_key_to_env={key: key for key in STORE_SECRET_KEYS},
        optional=True,
    )
    kubernetes.use_config_map_as_env(
        task,
        config_map_name=store_config,
        config_map_key_to_env={key: key for key in STORE_CONFIG_KEYS},
        optional=True,
    )
    return task


@dsl.pipeline(
    name=PIPELINE_NAME,
    description=(
        "NeuroViT main job: prepare data, analyse, split without leakage, train (GPU), calibrate and "
        "evaluate, publish a checksummed version to the model store. Research use only, not for diagnosis."
    ),
)
def training_pipeline(
    store_uri: str,
    data_uri: str = "demo",
    model_name: str = "neurovit",
    epochs: int = 230,
    batch_size: int = 64,
    learning_rate: float = 0.0,
    patience: int = 230,
    intensity_window: str = "percentile",
    time_budget_s: float = 0.0,
    seed: int = 0,
    amp: str = "auto",
    base_model: str = "",
    demo_images_per_class: int = 150,
    train_gpus: int = 1,
    store_secret: str = STORE_SECRET,
    store_config: str = STORE_CONFIG,
) -> str:
    """Training defaults are the GPU recipe's (``training.recipes``; a unit test keeps them equal), for the
    train task's GPU; with ``train_gpus=0`` pass a CPU-sized schedule. ``base_model``: a pretrained HF ViT
    to fine-tune (a hub id, where the cluster reaches the hub, or a folder the task can read). The output is
    the version URI."""
    data = _sized(
        prepare_data(data_uri=data_uri, demo_images_per_class=demo_images_per_class), "prepare-data"
    )
    # The data behind a URI can change between runs while the URI stays the same: never reuse a cached copy.
    data.set_caching_options(enable_caching=False)
    _with_store_access(data, store_secret, store_config)
    dataset = data.outputs["dataset"]

    analysis = _sized(analyze(dataset=dataset), "analyze")
    plan = _sized(split(dataset=dataset, analysis=analysis.outputs["analysis"], seed=seed), "split")
    trained = _sized(
        train(
            dataset=dataset,
            split_plan=plan.outputs["split_plan"],
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            patience=patience,
            intensity_window=intensity_window,
            time_budget_s=time_budget_s,
            seed=seed,
            amp=amp,
            base_model=base_model,
        ),
        "train",
    )
    trained.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(train_gpus)
    evaluated = _sized(
        evaluate(dataset=dataset, split_plan=plan.outputs["split_plan"], model=trained.outputs["model"]),
        "evaluate",
    )
    published = _sized(
        publish(
            calibrated_model=evaluated.outputs["calibrated_model"],
            evaluation=evaluated.outputs["evaluation"],
            split_plan=plan.outputs["split_plan"],
            analysis=analysis.outputs["analysis"],
            store_uri=store_uri,
            model_name=model_name,
        ),
        "publish",
    )
    # Publishing is a side effect: every run must publish its own version.
    published.set_caching_options(enable_caching=False)
    _with_store_access(published, store_secret, store_config)
    return published.outputs["Output"]


def compile_pipeline(output: str | Path = PIPELINE_FILE) -> Path:
    """Write the pipeline spec to ``output``; the same code and kfp version give the same bytes."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=training_pipeline, package_path=str(output))
    return output


def data_parameters(data_uri: str) -> dict[str, object]:
    """Pipeline parameters the data itself calls for: on the demo slices, the demo recipe's intensity window.

    So a pipeline run on the demo data, here or on a cluster, preprocesses like ``make demo``; any other
    data keeps the pipeline's default (TrainConfig's percentile window).
    """
    if data_uri != "demo":
        return {}
    from training.train import DEMO_TRAINING

    return {"intensity_window": DEMO_TRAINING["intensity_window"]}


def run_local(
    store_uri: str,
    *,
    data_uri: str = "demo",
    pipeline_root: str | Path | None = None,
    **arguments,
) -> str:
    """Run the pipeline here with kfp's subprocess runner; return the verified version URI.

    ``arguments`` are further pipeline parameters (epochs, batch_size, demo_images_per_class, ...).
    Task outputs go under ``pipeline_root`` (default ``<outputs>/kfp-local``).
    """
    from kfp import local

    from neurovit.config import OUTPUT_DIR
    from neurovit.store import resolve

    root = Path(pipeline_root) if pipeline_root else OUTPUT_DIR / "kfp-local"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    with warnings.catch_warnings():
        # The subprocess runner warns that an image whose name lacks "python" may not match the local
        # environment. It runs every task in this interpreter, whose environment is installed from the
        # same pinned pyproject.toml as the training image: the warning does not apply, so only it is
        # silenced (the runner's notes that it ignores resources and accelerators stay).
        warnings.filterwarnings(
            "ignore",
            message=r"You may be attemping to run a task that uses custom or non-Python base image",
            category=RuntimeWarning,
        )
        run = training_pipeline(store_uri=str(store_uri), data_uri=data_uri, **arguments)
    version_uri = run.output
    store, model, version = resolve(version_uri)
    store.verify(model, version)
    return version_uri
