# NeuroViT: from brain-MRI slices to an explained, monitored prediction service.
# `make help` lists the targets. Every target sets up .venv itself on first use.

# ---- GLOBALS -----------------------------------------------------------------------------------
SHELL        := /bin/bash
PYTHON       ?= python3
VENV         := .venv
VENV_BIN     := $(VENV)/bin
OUTPUT_DIR   ?= outputs
DATA_DIR     ?= $(OUTPUT_DIR)/demo-data
REAL_DATA    ?= ../shared/data/brain-tumor-mri
# Real tumour slices with radiologists' masks: half guides bench-train's maps on REAL_DATA, half is for
# eval-explain (another DATA_DIR trains unguided unless BENCH_ARGS="--guide-dir <masked folder>").
REAL_MASKS   ?= ../shared/data/tumour-masks
STORE        ?= $(OUTPUT_DIR)/store
MODEL        ?= latest
PYTEST_ARGS  ?=
NEUROVIT     := $(VENV_BIN)/neurovit
# The deploy targets run the same CLI with .venv-tools' Python, where the kserve SDK lives (the project is not
# installed there: `-m training.cli` from this folder; `neurovit deploy` imports no torch).
NEUROVIT_TOOLS = $(TOOLS_VENV)/bin/python -m training.cli

export NEUROVIT_OUTPUT_DIR := $(abspath $(OUTPUT_DIR))
export NEUROVIT_STORE ?= $(abspath $(STORE))

.DEFAULT_GOAL := help

# ---- SET-UP ------------------------------------------------------------------------------------
# PyPI downloads can break off mid-file (CI once lost torchserve's wheel at 40 of 42 MB, six resumes in a
# row): pip gets more resumes and reconnects (exported, so the image-dependency tests' installs get them
# too), and a whole install that still fails is started afresh up to twice more before the target fails.
export PIP_RETRIES        ?= 10
export PIP_RESUME_RETRIES ?= 20
PIP_ATTEMPTS := 3
DEV_EXTRAS   := .[serve,train,dev]
# $(call pip_install,<venv bin>,<pip args>)
pip_install = for attempt in $$(seq $(PIP_ATTEMPTS)); do \
	  $(1)/pip install --quiet $(2) && break; \
	  [ $$attempt -lt $(PIP_ATTEMPTS) ] || exit 1; \
	  echo "pip install $(2) failed (attempt $$attempt of $(PIP_ATTEMPTS)); retrying in 20 s" >&2; sleep 20; \
	done

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(call pip_install,$(VENV_BIN),--upgrade pip)
	# torch is pinned in pyproject.toml to the CPU wheel (2.13.0); a bare `torch` would pull CUDA wheels.
	# serve + train: every runtime dependency (the images install one list each: pyproject.toml).
	$(call pip_install,$(VENV_BIN),-e '$(DEV_EXTRAS)')
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create .venv and install NeuroViT with its pinned dependencies

# Tools whose pins clash with the project's (checkov, the kserve SDK): their own environment.
TOOLS_VENV   := .venv-tools
$(TOOLS_VENV)/.installed: requirements-tools.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(call pip_install,$(TOOLS_VENV)/bin,--upgrade pip)
	$(call pip_install,$(TOOLS_VENV)/bin,-r requirements-tools.txt)
	touch $@

.PHONY: tools-venv
tools-venv: $(TOOLS_VENV)/.installed ## Create .venv-tools (checkov, kserve SDK: requirements-tools.txt)

# The KServe runtime: the serving core with KServe's model server (pyproject extra serve-kserve), in its own
# environment because the kserve SDK's pins (psutil<6, pandas<3) clash with the dev ones. torch stays the
# CPU wheel pinned in the extra.
KSERVE_VENV  := .venv-kserve
$(KSERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(call pip_install,$(KSERVE_VENV)/bin,--upgrade pip)
	$(call pip_install,$(KSERVE_VENV)/bin,-e '.[serve-kserve]')
	touch $@

.PHONY: kserve-venv
kserve-venv: $(KSERVE_VENV)/.installed ## Create .venv-kserve (KServe's model server over the serving core)

# ---- MAIN JOB ----------------------------------------------------------------------------------
.PHONY: demo
demo: venv java ## Demo set -> analyse, split, train, evaluate, package, publish; then serve it and explain one slice
	$(NEUROVIT) demo --store $(NEUROVIT_STORE) --port $(SERVE_PORT)

.PHONY: demo-data
demo-data: venv ## Generate the built-in demo dataset (MNI152 slices with synthetic lesions and masks)
	$(NEUROVIT) data demo --out $(OUTPUT_DIR)/demo-data

.PHONY: analyze
analyze: venv ## Analyse DATA_DIR: counts, sizes, intensities, corrupt files, duplicates and leaks
	$(NEUROVIT) data analyze --data-dir $(DATA_DIR)

.PHONY: train
train: venv ## Analyse, split, train, evaluate and publish a model from DATA_DIR
	$(NEUROVIT) train --data-dir $(DATA_DIR) --store $(NEUROVIT_STORE) $(TRAIN_ARGS)

.PHONY: evaluate
evaluate: venv ## Evaluate MODEL (version folder, s3:// URI or "latest") on the images in DATA_DIR
	$(NEUROVIT) evaluate --model $(MODEL) --data-dir $(DATA_DIR) --store $(NEUROVIT_STORE) $(EVAL_ARGS)

.PHONY: eval-explain
eval-explain: venv ## Score MODEL's maps on DATA_DIR's lesion masks (its test split, or any masked folder: DATA_DIR=../shared/data/tumour-masks)
	$(NEUROVIT) explain-eval --model $(MODEL) --data-dir $(DATA_DIR) --store $(NEUROVIT_STORE) $(EXPLAIN_ARGS)

.PHONY: eval-ood
eval-ood: venv ## Flag rate of MODEL's OOD score: held-out MRI in DATA_DIR vs photos, noise, other images
	$(NEUROVIT) ood-eval --model $(MODEL) --data-dir $(DATA_DIR) --store $(NEUROVIT_STORE) $(OOD_ARGS)

.PHONY: versions
versions: venv ## List the complete versions in the store
	$(NEUROVIT) versions list --store $(NEUROVIT_STORE)

.PHONY: pipeline
pipeline: venv ## Run the Kubeflow pipeline on this machine with kfp's local runner (demo data)
	$(NEUROVIT) pipeline run --store $(NEUROVIT_STORE)

.PHONY: pipeline-compile
pipeline-compile: venv ## Recompile training/pipeline.yaml from training/pipeline.py
	$(NEUROVIT) pipeline compile

.PHONY: pipeline-submit
pipeline-submit: venv ## Submit training/pipeline.yaml to Kubeflow Pipelines (KFP_HOST, NEUROVIT_STORE_URI, ...; SUBMIT_ARGS="--param epochs=30")
	$(NEUROVIT) pipeline submit $(SUBMIT_ARGS)

# ---- SERVING -----------------------------------------------------------------------------------
SERVE_PORT   ?= 8080
EXPLAIN      ?= all

.PHONY: java
java: ## Install Java 17 (TorchServe's frontend) where it is missing (Debian/Ubuntu, as root)
	@command -v java >/dev/null 2>&1 || (apt-get update -qq -o Acquire::Retries=5 && apt-get install -y -qq -o Acquire::Retries=5 openjdk-17-jre-headless)

.PHONY: prometheus
prometheus: ## Install Prometheus and promtool (monitoring checks, demos) where missing (Debian/Ubuntu, as root)
	@command -v promtool >/dev/null 2>&1 || (apt-get update -qq -o Acquire::Retries=5 && apt-get install -y -qq -o Acquire::Retries=5 --no-install-recommends prometheus)

.PHONY: package
package: venv ## Build MODEL's TorchServe archive and KServe config into outputs/package/<version>
	$(NEUROVIT) package --model $(MODEL) --store $(NEUROVIT_STORE)

# torchserve (token auth on; key file in outputs/serve/) or kserve (KServe's model server, .venv-kserve)
RUNTIME      ?= torchserve
# TorchServe's batch delay in ms; empty: `neurovit serve`'s default (docs/serving-api.md says why)
BATCH_DELAY_MS ?=

.PHONY: serve
serve: venv $(if $(filter kserve,$(RUNTIME)),kserve-venv,java) ## Serve MODEL on SERVE_PORT with RUNTIME=torchserve (default; token auth, key in outputs/serve/; BATCH_DELAY_MS) or kserve
	$(NEUROVIT) serve --model $(MODEL) --store $(NEUROVIT_STORE) --port $(SERVE_PORT) --runtime $(RUNTIME) $(if $(BATCH_DELAY_MS),--batch-delay-ms $(BATCH_DELAY_MS))

.PHONY: predict
predict: venv ## Send IMAGE=<file> to the local server (EXPLAIN=none|rollout|heatmap|all); overlays in outputs/predictions
	$(if $(IMAGE),,$(error IMAGE=<file> is required))
	$(NEUROVIT) predict --image $(IMAGE) --explain $(EXPLAIN)

.PHONY: stop
stop: venv ## Stop the local server started by `make serve`, either runtime (and Prometheus from `make monitor`/`drift-demo`)
	$(NEUROVIT) stop

# ---- MONITORING --------------------------------------------------------------------------------
PROMETHEUS_PORT ?= 9090

.PHONY: monitor
monitor: venv $(if $(filter kserve,$(RUNTIME)),kserve-venv,java) prometheus ## RUNTIME's server + Prometheus with monitoring/rules, a little traffic; prints the URL and queries
	$(NEUROVIT) monitor start --model $(MODEL) --store $(NEUROVIT_STORE) --data-dir $(DATA_DIR) --port $(SERVE_PORT) --prometheus-port $(PROMETHEUS_PORT) --runtime $(RUNTIME)

.PHONY: drift-demo
drift-demo: venv $(if $(filter kserve,$(RUNTIME)),kserve-venv,java) prometheus ## In-distribution then shifted traffic: PSI plot and a firing drift alert (outputs/drift-demo)
	$(NEUROVIT) monitor drift-demo --model $(MODEL) --store $(NEUROVIT_STORE) --data-dir $(DATA_DIR) --port $(SERVE_PORT) --prometheus-port $(PROMETHEUS_PORT) --runtime $(RUNTIME)

# ---- LOAD TESTS (locust; scenarios in handlers/benchmarks/load/locustfile.py) ---------------------------------
LOAD_TIME    ?= 60s
LOAD_USERS   ?= 8
LOAD_USER    ?= MixedUser
LOAD_P95_MS  ?= 500

.PHONY: load-test
load-test: venv ## Locust against `make serve` (LOAD_USERS users, LOAD_TIME); CSV + HTML report in outputs/load/<time>/
	@out=$(OUTPUT_DIR)/load/$$(date +%Y%m%d-%H%M%S); mkdir -p $$out; \
	$(VENV_BIN)/locust -f handlers/benchmarks/load/locustfile.py --headless -u $(LOAD_USERS) -r $(LOAD_USERS) -t $(LOAD_TIME) \
	    --p95-objective-ms $(LOAD_P95_MS) --csv $$out/load --html $$out/report.html \
	    --summary-file $$out/summary.json $(LOAD_ARGS) $(LOAD_USER); status=$$?; \
	echo "load test report: $$out/report.html (CSV $$out/load_*.csv, summary $$out/summary.json)"; exit $$status

# ---- BENCHMARKS --------------------------------------------------------------------------------
.PHONY: bench-train
bench-train: venv ## Train the default recipe on real slices within a time budget (BENCH_ARGS="--recipe gpu": the GPU recipe, needs CUDA); prints a JSON line
	$(NEUROVIT) bench train --data-dir $(if $(filter $(OUTPUT_DIR)/demo-data,$(DATA_DIR)),$(REAL_DATA) --guide-dir $(REAL_MASKS),$(DATA_DIR)) --store $(NEUROVIT_STORE) $(BENCH_ARGS)

.PHONY: bench-serve
bench-serve: venv java kserve-venv ## Latency against the in-process predict and the bare forward, requests/s; TorchServe and the KServe runtime side by side
	$(NEUROVIT) bench serve --model $(MODEL) --store $(NEUROVIT_STORE) $(BENCH_ARGS)

.PHONY: bench-load
bench-load: venv java ## Capacity per replica: locust users stepped up to the p95 objective; plot and KServe sizing
	$(NEUROVIT) bench load --model $(MODEL) --store $(NEUROVIT_STORE) $(BENCH_ARGS)

.PHONY: bench-analyze
bench-analyze: venv ## Time the analysis of 10,000 images
	$(NEUROVIT) bench analyze

# ---- KUBERNETES (manifests/, helm/neurovit; README "On Kubernetes") ----------------------------
NAMESPACE    ?= neurovit
ISVC         ?= neurovit
CANARY       ?= 10

.PHONY: kube-monitoring
kube-monitoring: venv ## Copy monitoring/rules and dashboards into the chart and the kustomize base (PrometheusRule, ConfigMaps)
	$(NEUROVIT) monitor sync-k8s

.PHONY: kube-validate
kube-validate: venv tools-venv ## Render every overlay and chart variant; validate (schemas, CRDs, security, checkov, hadolint)
	$(VENV_BIN)/python -m pytest tests/deploy -q

.PHONY: deploy deploy-promote deploy-rollback
deploy deploy-promote deploy-rollback: NEUROVIT = $(NEUROVIT_TOOLS)

.PHONY: deploy
deploy: tools-venv ## Verify version STORAGE_URI=s3://.../<version> in the store, roll it out to ISVC in NAMESPACE as a canary with CANARY % of the traffic (100: rollout)
	$(NEUROVIT) deploy canary --storage-uri "$(STORAGE_URI)" --percent $(CANARY) --name $(ISVC) --namespace $(NAMESPACE)

.PHONY: deploy-promote
deploy-promote: tools-venv ## Send all of ISVC's traffic to the canary
	$(NEUROVIT) deploy promote --name $(ISVC) --namespace $(NAMESPACE)

.PHONY: deploy-rollback
deploy-rollback: tools-venv ## Serve the version ISVC served before the last `make deploy`, with all the traffic
	$(NEUROVIT) deploy rollback --name $(ISVC) --namespace $(NAMESPACE)

# ---- QUALITY -----------------------------------------------------------------------------------
.PHONY: test
test: venv java prometheus tools-venv kserve-venv ## Run the whole test suite (unit, integration: real TorchServe and KServe servers, S3 endpoint, kfp runner; deploy; slow)
	$(VENV_BIN)/python -m pytest $(PYTEST_ARGS)

FAST_MARKERS := not integration and not deploy and not slow and not image_deps

.PHONY: test-fast
test-fast: venv ## Quick check in under two minutes: no Java, Prometheus or .venv-tools (not integration, deploy, slow, image_deps)
	$(VENV_BIN)/python -m pytest -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

.PHONY: lint
lint: venv ## Ruff lint and format check
	$(VENV_BIN)/ruff check neurovit training handlers monitoring tests
	$(VENV_BIN)/ruff format --check neurovit training handlers monitoring tests

.PHONY: clean
clean: ## Remove generated outputs (not the venv)
	rm -rf $(OUTPUT_DIR)

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'
