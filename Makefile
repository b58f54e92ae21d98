# AADS-ULoRA. Two set-up commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := install

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ORCH := $(VENV)/bin/orchestrator
# The CPU wheel lies in pip's find-links on this project's machines; elsewhere pip takes torch from the index.
TORCH_SPEC ?= torch==2.13.0
VERSIONS := v5.5.3-performance v5.5.4-dinov3
MODELS_DIR := build/models
# The variant `make images` builds: the one a compose target's `variant: auto` deploys on this host.
VARIANT ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install engine kubectl prometheus-tools models images demo test test-unit test-integration \
        bench-serving bench-backbones bench-ready bench-images bench-switch bench-backup bench-upload-memory gpu-check \
        mutation clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 20

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q '$(TORCH_SPEC)'
	$(VENV)/bin/pip install -q -e '.[serving,orchestrator,dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv with the project (CLI: .venv/bin/orchestrator)

engine:  ## start a Docker engine + registry on 127.0.0.1:5000 + local base image, where none runs
	bash scripts/engine.sh

models: install  ## demo model sets (random-init backbones, synthetic adapters) in build/models/<version>
	@for v in $(VERSIONS); do $(PY) -m serving.demo_models --version-dir versions/$$v --out $(MODELS_DIR)/$$v; done

images: install engine models  ## build + push both versions in the variant `variant: auto` deploys here (cuda: <version>, cpu: <version>-cpu)
	@echo "images: the $(VARIANT) variant ($(if $(filter cuda,$(VARIANT)),a GPU is visible,no GPU visible: the CPU image, tag <version>-cpu))"
	@for v in $(VERSIONS); do $(ORCH) build $$v --variant $(VARIANT) && $(ORCH) push $$v --variant $(VARIANT); done

demo: images  ## the whole story: deploy v5.5.3, switch to v5.5.4, roll back
	bash scripts/demo.sh

kubectl:  ## kubectl 1.32 (Debian trixie's) where none new enough is on PATH; part of `make engine`
	bash scripts/engine.sh --kubectl

prometheus-tools:  ## prometheus + promtool from Debian's package into build/tools/prometheus (the monitoring tests)
	bash scripts/prometheus_tools.sh

test-unit: install kubectl  ## unit + API tests (no engine)
	$(PY) -m pytest tests/unit tests/api -q

test: install engine models prometheus-tools  ## everything, engine tests included
	$(PY) -m pytest tests -q --durations=25

# The functions that carry the release promises ([tool.mutmut] in pyproject.toml picks the fast tests).
MUTATION_SCOPE := 'orchestrator.backends.compose.haproxy.*' 'orchestrator.resolve.*' \
	'orchestrator.switchflow.x*Steps*' 'orchestrator.switchflow.x_pause_hook__mutmut_*' \
	'orchestrator.switchflow.x_run__mutmut_*' 'orchestrator.switchflow.x_fail__mutmut_*' \
	'orchestrator.backends.compose.switch.x*ComposeSwitch*' \
	'orchestrator.backends.compose.backend.x*ComposeBackend*_switch_locked__mutmut_*' \
	'orchestrator.backup.verify.*' \
	'serving.decision.*' 'serving.ood.x*OODModel*scores__mutmut_*'

# OMP_NUM_THREADS=1: a forked mutant run that inherits torch's thread pool can hang (a false "timeout").
mutation: install  ## mutation testing (mutmut) of the promise-carrying code against the fast tests; docs/testing.md
	OMP_NUM_THREADS=1 nice -n 10 $(VENV)/bin/mutmut run --max-children 2 $(MUTATION_SCOPE)
	$(PY) scripts/mutation_report.py $(MUTATION_SCOPE)

.PHONY: lint
test-integration: install engine models  ## engine tests only (tests/integration: real Docker engine, registry, compose)
	$(PY) -m pytest tests/integration -q --durations=25

lint: install  ## ruff + the import contract (which package may import which; [tool.importlinter] in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench-serving: install  ## HTTP vs in-process vs naive serving
	$(PY) benchmarks/bench_serving.py

bench-backbones: install  ## DINOv3 vs DINOv2 latency/throughput/memory, fp32 vs bf16, dynamic depth
	$(PY) benchmarks/bench_backbones.py
	$(PY) benchmarks/bench_precision.py
	$(PY) benchmarks/bench_dynamic_depth.py

bench-ready: install models  ## time to /ready with its phases: this tree vs the service before the speed work
	$(PY) benchmarks/bench_ready.py

bench-images: install engine models  ## image size per version/variant, layers shared by the versions, cold vs cached build
	$(PY) benchmarks/bench_images.py

bench-switch: images  ## switch, rollback and a canary switch under load through the edge (own stack; docs/benchmarks.md)
	$(PY) benchmarks/bench_switch.py

.PHONY: bench-switch-ready
READY_BASE ?= c9bef26
bench-switch-ready: install engine models  ## cold switch's time to traffic: READY_BASE's code (default c9bef26) vs this tree, one run
	PY=$(abspath $(PY)) bash benchmarks/switch_before_after.sh $(READY_BASE)

bench-backup: install engine  ## backup create/restore vs docker save/load, peak RSS, zstd (own multi-GB test image)
	$(PY) benchmarks/bench_backup.py

gpu-check:  ## on a GPU machine (python3 + torch/transformers/peft only): build, serve, bf16 vs fp32, img/s, memory
	python3 scripts/gpu_check.py --out build/gpu-check

bench-upload-memory: install models  ## peak RSS of a slot under 32 clients sending the largest allowed images
	$(PY) benchmarks/bench_upload_memory.py

clean:  ## remove build outputs (not the ledger)
	rm -rf build
