# Every target works as the first command on a fresh clone: train/test/lint install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: sync install train test test-fast lint format clean bench-data bench-cache-check bench-unfreeze bench-gpu report bench-eval bench-predict sweep exp1 exp2 exp1-table1 rehearse gpu-check study

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The main job: the three formulations on the embedded sample (or MIMIC-CXR when configured).
train: install
	$(BIN)/python -m cxr_lightning.train -m formulation=binary,multilabel,multiclass

## The whole study, resumably, into outputs/study: cohort (Table 2), cache, baseline, Table 1's
## schedule, experiment II, REPORT.md. Rerun to continue; STUDY_ARGS="--seeds 3 ..." adds options.
STUDY_ARGS ?=
study: install
	$(BIN)/python -m cxr_lightning.study $(STUDY_ARGS)

## Sweeps (on the embedded sample unless a dataset is configured; ARGS="..." adds overrides).
ARGS ?=
## formulation x unfreeze interval.
sweep: install
	$(BIN)/python -m cxr_lightning.train -m formulation=binary,multilabel,multiclass unfreeze.interval=5,10,15 $(ARGS)

## Experiment I: multiclass over unfreeze interval x depth, each stage tested.
exp1: install
	$(BIN)/python -m cxr_lightning.train -m experiment=exp1_unfreeze $(ARGS)

## Table 1's schedule rerun (80 epochs, each stage tested; the study's Table 1 numbers came from
## another task, so only the schedule is the study's).
exp1-table1: install
	$(BIN)/python -m cxr_lightning.train -m experiment=exp1_table1 $(ARGS)

## Experiment II: the three formulations x 3 seeds on one split.
exp2: install
	$(BIN)/python -m cxr_lightning.train -m experiment=exp2_formulations $(ARGS)

## The whole test suite (the end-to-end multirun included).
test: install
	$(BIN)/python -m pytest -q

## Everything but the end-to-end runs.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

## The whole study rehearsed through the real CLI (paper configuration, ResNet152 at 512, the
## three formulations, one epoch per setting): rates and the projected cost of the full study.
## ~5 min on a GPU; reduced on a CPU (multiclass only, a few batches).
rehearse: install
	$(BIN)/python experiments/rehearse.py $(BENCH_ARGS)

## Every CUDA-only branch in one go: gpu-marked tests, bf16 per formulation, Inductor over four
## settings, fused AdamW, heatmaps on CUDA, a resume, DDP when two GPUs are visible. One JSON
## verdict line, exit 1 on a failure; ~5 min on one GPU. On a CPU: "needs a GPU", exit 0.
gpu-check: install
	$(BIN)/python experiments/gpu_check.py $(BENCH_ARGS)

## Data-path throughput (DICOM -> 512 cache per core, cache -> batches per worker); < 2 min.
bench-data: install
	$(BIN)/python experiments/bench_data.py

## Cost of the cache's integrity check when a job opens it (4 shards at 512 px)
bench-cache-check: install
	$(BIN)/python experiments/bench_cache_check.py $(BENCH_ARGS)

## Train-step time per unfreezing stage vs Lightning's naive freeze (resnet50@224, batch 16;
## BENCH_ARGS="--device cuda --bf16 ..." overrides), ~3 min on 2 idle cores.
bench-unfreeze: install
	$(BIN)/python experiments/bench_unfreeze.py --backbone resnet50 --size 224 --batch 16 $(BENCH_ARGS)

## Training (per unfreezing stage, shipped settings vs each optimisation undone) and prediction
## (PNG/DICOM, 0/4/all workers) through the real loop, one JSON line; ~5 min on a GPU, reduced
## (ResNet18 at 64 px) on a CPU.
bench-gpu: install
	$(BIN)/python experiments/bench_gpu.py $(BENCH_ARGS)

## Prediction throughput, ResNet152 at 512 on the CPU (network alone and files end to end);
## BENCH_ARGS="--device cuda --heatmaps ..." overrides, ~1 min on 2 cores.
bench-predict: install
	$(BIN)/python experiments/bench_predict.py --backbone resnet152 --size 512 $(BENCH_ARGS)

## Evaluation with patient-bootstrap CIs on 10,000 predictions (~3,000 patients, 2,000
## resamples): seconds per finding, whole evaluation and bootstrap alone; ~1 min on 2 idle cores.
bench-eval: install
	$(BIN)/python experiments/bench_bootstrap.py $(BENCH_ARGS)

## The study's tables and figures from a sweep: SWEEP=outputs/multiruns/<run> (default: newest).
SWEEP ?=
report: install
	$(BIN)/python -m cxr_lightning.report $(SWEEP)

## Upload every offline W&B run under SWEEP (a multirun or run directory; default: outputs).
sync: install
	$(BIN)/wandb sync $$(find $(or $(SWEEP),outputs) -type d -name 'offline-run-*')

lint: install
	$(BIN)/ruff check cxr_lightning tests experiments

format: install
	$(BIN)/ruff format cxr_lightning tests experiments

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
