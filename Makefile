# thermoscreen: every command the README and CI use. `make demo` and `make test` do all set-up.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
	gstreamer1.0-libav gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 \
	libgirepository1.0-dev libcairo2-dev pkg-config gcc python3-venv python3-dev \
	mosquitto mosquitto-clients openssl postgresql \
	gstreamer1.0-plugins-ugly chromium chromium-driver gir1.2-gst-rtsp-server-1.0
DEMO_MODEL := models/demo
SHIPPED_MODEL := models/dmr
DMR_DATA := ../shared/data/dmr-ir-frontal
STUDY_DIR := results/evaluation
DEMO_DIR := var/demo

.PHONY: setup apt test test-fast lint format demo model bench evaluate evaluate-finetune model-dmr \
	chaos clean exam-screenshot screenshots

setup: $(STAMP)

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml | apt
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,dev]'
	@touch $@

test: setup
	$(BIN)/python -m pytest -q tests

test-fast: setup
	$(BIN)/python -m pytest -q -m 'not slow' tests

lint: setup
	$(BIN)/ruff format --check pipeline training tests
	$(BIN)/ruff check pipeline training tests
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format pipeline training tests
	$(BIN)/ruff check --fix pipeline training tests

# A pipeline-demo model trained on synthetic thermograms (not a medical model), built once.
model: $(DEMO_MODEL)/model.json
$(DEMO_MODEL)/model.json: | setup
	$(BIN)/thermoscreen synth --out $(DEMO_DIR)/train --patients 40 --kind matrices --seed 1
	$(BIN)/thermoscreen train --data $(DEMO_DIR)/train --arch resnet18 --weights none \
		--epochs 3 --out $(DEMO_DIR)/run --seed 1
	$(BIN)/thermoscreen export --run $(DEMO_DIR)/run --out $(DEMO_MODEL) --name demo-synthetic \
		--synthetic

demo: model
	$(BIN)/python -m pipeline.devtools.demo --model $(DEMO_MODEL) --workdir $(DEMO_DIR)

# the README's picture of an exam report: a demo exam on the synthetic test:// patient, rendered by
# headless chromium (docs/img/exam-report.png)
exam-screenshot: model
	$(BIN)/python -m pipeline.devtools.exam_screenshot --model $(DEMO_MODEL) \
		--out docs/img/exam-report.png

# the README's pictures: the exam report above, and the operator console during an exam on the
# synthetic test:// patient, driven in headless chromium (docs/img/console.png)
screenshots: model exam-screenshot
	$(BIN)/python -m pipeline.devtools.screenshots --model $(DEMO_MODEL) --out docs/img

# The fault campaign (not part of `make test`): broker, logger and pipeline SIGKILLs, a removed
# logger database, poison payloads, a client-id takeover, against real processes on loopback;
# prints sent / stored / doubled / duplicates / gaps per case (a few minutes).
chaos: setup
	$(BIN)/python -m tests.chaos --repeat 3 --out results/chaos.md

# the shipped model first, then the demo ResNet18; every source kind, live 10 min at 30 and 120
# fps, other ways to run the shipped model (about 30 min on 2 idle cores; docs/benchmark.md)
bench: model
	@test -f $(SHIPPED_MODEL)/model.json || { echo "make bench: $(SHIPPED_MODEL) is missing;" \
		"build the shipped model first (make model-dmr)"; exit 2; }
	$(BIN)/thermoscreen bench --model $(SHIPPED_MODEL) --model $(DEMO_MODEL) \
		--torch-checkpoint $(DEMO_DIR)/run/best.pt --data ../shared/data/dmr-ir-frontal \
		--frames 300 --repeats 3 --live-seconds 600 --live-fps 30 120 --variants --out results

# the candidates compared under one nested, patient-grouped protocol over split seeds 0-2, with
# the rendering-robustness and shortcut checks (frozen backbones; resumable, caches in OUT/cache)
evaluate: setup
	$(BIN)/python -m training.study --data $(DMR_DATA) --out $(STUDY_DIR)

# the end-to-end candidates (Lite0 fine-tuned, early stopping and fold ensembles on inner folds);
# hours on a small CPU, resumable; `make evaluate` then lists them beside the frozen ones
evaluate-finetune: setup
	$(BIN)/python -m training.study --data $(DMR_DATA) --out $(STUDY_DIR) --fine-tune

# the shipped DMR-IR model: the study's chosen candidate fitted on every development patient and
# exported with its threshold (uses $(STUDY_DIR)/study.json when present)
model-dmr: $(SHIPPED_MODEL)/model.json
$(SHIPPED_MODEL)/model.json: | setup
	$(BIN)/python -m training.study --data $(DMR_DATA) --out $(STUDY_DIR) --ship \
		--model-out $(SHIPPED_MODEL)

clean:
	rm -rf var results .pytest_cache .mypy_cache .ruff_cache
