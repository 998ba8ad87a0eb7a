# Two commands for a fresh clone: `make demo` and `make test`. Both call `make setup`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: setup demo ui test test-all lint format bench clean clip-synth clip-synth-study study study-2026-11

setup: $(STAMP)

# torch first, pinned: on this CPU machine pip takes the local CPU wheel; on a cluster the
# same pin brings the CUDA build. The project itself then installs around it.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

# The demo (sweeps/grids/demo.yaml): two loss recipes x 2 seeds on synthetic pedestrians,
# trained from scratch, two trials at a time, tracked in sqlite:///mlflow.db; then its table
# (Rank-1 against chance), the per-epoch curves and retrieval examples. About 5 minutes on 2
# cores with the .venv in place (BENCHMARKS.md "The demo").
demo: setup
	$(BIN)/python sweeps/launch.py --grid demo --max-parallel 2
	$(BIN)/python analysis/make_tables.py --study demo --format all --out tables
	$(BIN)/python analysis/show_retrievals.py --trial runs/demo --queries 6 --out tables/demo_retrievals_test.png
	@echo "curves: tables/demo_val_R1_per_epoch.png   retrievals: tables/demo_retrievals_test.png"
	@echo "compare runs: make ui   (or .venv/bin/mlflow ui), then open $$($(BIN)/python -c "from bilma.tracking.store import runs_url; print(runs_url('sqlite:///mlflow.db', 'demo') or 'http://127.0.0.1:5000')")"

# The MLflow UI over the demo's store (and every local sweep's): http://127.0.0.1:5000
ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1

# The tiny CLIP pretrained on synthetic pedestrians (CLIP's contrastive loss, about 10 minutes
# on a 2-core CPU), exported as a transformers CLIP folder that configs/synth_finetune.yaml and
# the synth_* grids start from. Built once: a folder from the same config is reused, one from
# another (stale) config is refused with the fix named.
CLIP_SYNTH ?= data/clip-synth-tiny
clip-synth: setup
	$(BIN)/python -m bilma pretrain-clip --config configs/synth_pretrain.yaml --out $(CLIP_SYNTH)

# The tiny CLIP of the local-matching study: the same pretraining on the study's world (large
# local parts, 4:4:4 JPEGs; configs/synth_study_pretrain.yaml). About 10 minutes, built once.
clip-synth-study: setup
	$(BIN)/python -m bilma pretrain-clip --config configs/synth_study_pretrain.yaml --out data/clip-synth-study

# The local-matching study (README "A laptop-scale BiLMa study"; about 2 hours on 2 cores,
# resumable: the same command goes on where it stopped): its tiny CLIP, IRRA against BiLMa
# (SemMIM ATR-18) and a positive control over 8 paired seeds, two trials at a time
# (sweeps/grids/synth_study.yaml), then the readout fixed before the run (within-group Rank-1
# on val + test pooled, last and selected checkpoints, paired tests, the decision rule).
study: clip-synth-study
	$(BIN)/python sweeps/launch.py --grid synth_study --max-parallel 2
	$(BIN)/python analysis/lookalike_readout.py --study synth-study --baseline IRRA --control "IRRA + attribute loss (positive control)" --zero-shot configs/synth_study.yaml --out tables
	$(BIN)/python analysis/branch_probe.py --study synth-study --out tables

# The first laptop study (2026-11-30, README): the branch ablation on the look-alike pairs world
# (15 trials), the knobs (4), pretrained vs scratch (6), their tables and the branch probe.
STUDY_METRICS := R1 mAP lookalike_R1 ordinary_R1 twin_errors
study-2026-11: clip-synth
	$(BIN)/python -m bilma eval --config configs/synth_finetune.yaml loss.mlm_weight=0 loss.mim_weight=0
	$(BIN)/python sweeps/launch.py --grid synth_ablation
	$(BIN)/python sweeps/launch.py --grid synth_knobs
	$(BIN)/python sweeps/launch.py --grid synth_pretrained
	$(BIN)/python analysis/make_tables.py --study synth_ablation --baseline "+MLM (IRRA)" --metric $(STUDY_METRICS) --format all --out tables
	$(BIN)/python analysis/make_tables.py --study synth_knobs --metric $(STUDY_METRICS) --format all --out tables
	$(BIN)/python analysis/make_tables.py --study synth_pretrained --metric $(STUDY_METRICS) --format all --out tables
	$(BIN)/python analysis/branch_probe.py --study synth_ablation --out tables

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

# Speed and memory, recorded in BENCHMARKS.md (never run by the tests).
bench: setup
	$(BIN)/python benchmarks/bench_loader.py
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .pytest_cache
