# actmatch — run `make help` for the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch/torchvision are installed first so pip resolves the rest against them.
TORCH   ?= torch torchvision
IMAGES  ?= ../shared/data/imagenet-sample
TRAIN   ?= ../shared/data/imagenet-train
OUT     ?= outputs

.PHONY: help install demo test test-behaviour check-report bench bench-explain study amortized ablations lint clean

help:  ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install actmatch with its dependencies

demo: $(STAMP)  ## explain a bundled real photo (scikit-image's coffee) into outputs/demo/
	$(BIN)/actmatch demo --out $(OUT)/demo

test: $(STAMP)  ## run the fast test suite
	$(BIN)/python -m pytest -q --durations=15

test-behaviour: $(STAMP)  ## run the behaviour tests (shortcut, DDP, circuit, full fits)
	$(BIN)/python -m pytest -q -m behaviour --durations=15

lint: $(STAMP)  ## ruff (lint + format check) on actmatch/, tests/ and experiments/; mypy on actmatch/
	$(BIN)/ruff check actmatch tests experiments
	$(BIN)/ruff format --check actmatch tests experiments
	$(BIN)/mypy actmatch

check-report:  ## render report.html in headless Chromium (Debian's chromium + playwright; installs nothing, fails if missing)
	ACTMATCH_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q tests/test_report.py -k browser -m "slow or not slow"

bench-explain: $(STAMP)  ## explain every image under IMAGES and print the area / label-kept table
	$(BIN)/actmatch explain $(IMAGES) --out $(OUT)/bench-explain

STUDY_CONFIGS ?= experiments/explain/faithful.yaml experiments/explain/sis.yaml
study: $(STAMP)  ## one fit-study row per config in STUDY_CONFIGS on IMAGES (LIMIT=N for the first N)
	$(BIN)/actmatch study $(IMAGES) $(foreach c,$(STUDY_CONFIGS),--config $(c)) --out $(OUT)/study \
		$(if $(LIMIT),--limit $(LIMIT)) --plot $(OUT)/study/study.png

# the shipped amortized recipe and its ablations: one run folder each under $(AMORTIZED)/<file stem>/
AMORTIZED ?= $(OUT)/amortized
RECIPES   ?= experiments/amortized_lite0.yaml $(sort $(wildcard experiments/ablations/*.yaml))
best_ckpt  = $$(ls -t $(AMORTIZED)/$$(basename $(1) .yaml)/actmatch/*/checkpoints/best.ckpt 2>/dev/null | head -1)

amortized: $(STAMP)  ## train the shipped amortized recipe on TRAIN (about 9 min on 2 CPU cores)
	$(BIN)/actmatch fit --config experiments/amortized_lite0.yaml --data.init_args.root $(TRAIN) \
		--trainer.logger.init_args.save_dir $(AMORTIZED)/amortized_lite0

ablations: $(STAMP)  ## train each of RECIPES not trained yet (about 9 min each on 2 CPU cores), then print and log their held-out table on IMAGES
	@set -e; for f in $(RECIPES); do \
		if [ -n "$(call best_ckpt,$$f)" ]; then echo "$$f: trained, $(call best_ckpt,$$f)"; continue; fi; \
		extra=$$([ "$$f" = experiments/amortized_lite0.yaml ] || echo "--config $$f"); \
		$(BIN)/actmatch fit --config experiments/amortized_lite0.yaml $$extra --data.init_args.root $(TRAIN) \
			--trainer.logger.init_args.save_dir $(AMORTIZED)/$$(basename $$f .yaml); \
	done
	$(BIN)/actmatch study $(IMAGES) --amortized $(foreach f,$(RECIPES),--checkpoint "$(call best_ckpt,$(f))") \
		--exam-photos $(TRAIN) --out $(AMORTIZED)/study --wandb

bench: $(STAMP)  ## compare actmatch with the baselines on IMAGES (actmatch benchmark)
	$(BIN)/actmatch benchmark --images $(IMAGES) --limit 20 --out $(OUT)/benchmark

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf $(OUT) wandb lightning_logs .pytest_cache .mypy_cache .ruff_cache
