# The interface people type. `make help` lists every target and variable.
# Every variable is optional: empty means "the tool's documented default" (printed by `make help`).

SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_PIN := torch==2.13.0

## Variables (defaults in brackets; a misspelt one stops make and names the closest):
##   DATASET      breakfast | coin | lvu | synthetic | folder (your own videos)   [most recently extracted, else synthetic]
##   TASK         LVU task (relationship ... view_count), Breakfast split s1..s4, or all (each in turn)   [dataset default]
##   DATA_ROOT    folder holding the raw data set      [data/raw/<dataset>]
##   ENCODER      HF hub id, local model folder, or vit-tiny-random (families: README, Encoders)
##                [google/vit-large-patch16-224-in21k; breakfast, coin: facebook/timesformer-base-finetuned-k600]
##   FPS | SEGMENTS  sampling at extraction   [LVU: FPS=1; breakfast, coin: SEGMENTS=128; synthetic: SEGMENTS=64]
##   SAMPLING     paper: LVU only, the paper code's frames from lvu_1.0/lvu_durations.csv, not FPS   [FPS/SEGMENTS]
##   FRAMES_PER_SEGMENT, POOL, BATCH, WORKERS, CACHE_DIR [1 (video encoders: num_frames), none, 32, 2, cache]
##   FRAME_STRIDE video encoders: source frames (at 30 fps) between a clip's frames   [the family's: 32, 4, 2]
##   HEAD         s4-multiscale | s4-singlescale | transformer-multiscale | transformer | mean-pool   [s4-multiscale]
##   EPOCHS, BATCH, LR, SEED   [the training defaults below]; with RESUME the run's own values unless given
##   D_MODEL, N_LAYERS, D_STATE, DROPOUT   head width, blocks, S4 state size, dropout   [the head defaults below]
##   CLIP         clip protocol: window:W (lvu) or subset:K (breakfast, coin, folder)   [the data set's]
##   EVAL_STRIDE  segments between evaluation windows   [the training default below]
##   HEADS, SEEDS, NAME   make ablate: comma-separated heads and seeds, the ablation's folder name   [the ablation
##                defaults below]
##   ACCELERATOR, DEVICES, NODES   [auto, 1, 1]; DEVICES>1 or NODES>1 trains with DDP
##   RESUME       runs/.../checkpoints/last.ckpt, or 'last' for the newest run   [none]
##   TAG          cache tag to train on (cache/<dataset>/<tag>)   [most recent]
##   ALLOW_MISSING=1  also train without videos that are on disk but not extracted yet   [stop: run make extract]
##   REQUIRE_ALL=1    stop unless every listed video is cached   [skip, and count, videos without media or
##                    whose extraction failed]
##   CKPT (make eval, make predict: [the newest runs/**/best.ckpt]), RUN (make report), QUICK=1 / GPU=1 (make bench)
##   VIDEO, OUT, TOPK   make predict: a video file or folder, output folder, classes shown   [-, predictions, 5]
##   VERBOSE=1 (the libraries' own messages: Lightning, transformers, KeOps), DEBUG=1 (full tracebacks)

# Read by the tools from the environment (command-line variables reach the recipes' environment by themselves).
export VERBOSE DEBUG

# A command-line variable this Makefile never reads is a typo: stop before doing anything, naming the closest known
# one. The known ones come from this file's own text (variable references, first arguments of `call`, assignments,
# `export` lines), so a variable added to the Makefile is known without a second list to keep.
paren := (
var_uses := \$$[$(paren){][A-Z][A-Z0-9_]*|call [a-z_]+,[A-Z][A-Z0-9_]*|^[A-Z][A-Z0-9_]* *[:?+]?=|^export( +[A-Z][A-Z0-9_]*)+
KNOWN_VARS = $(sort $(shell grep -oE '$(var_uses)' $(firstword $(MAKEFILE_LIST)) | \
	sed -E 's/^(\$$[$(paren){]|call [a-z_]+,|export +)//; s/ *[:?+]?=$$//'))
GIVEN_VARS := $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v)))
ifneq ($(GIVEN_VARS),)
UNKNOWN_VARS := $(filter-out $(KNOWN_VARS),$(GIVEN_VARS))
ifneq ($(UNKNOWN_VARS),)
$(error $(shell $(PYTHON) -c 'import difflib, sys; known = sys.argv[2].split(); \
	near = lambda v: difflib.get_close_matches(v.upper(), known, 1, 0.6); \
	print("; ".join(v + " is not a variable of this Makefile" + ("; did you mean " + near(v)[0] + "?" if near(v) else "") \
	                for v in sys.argv[1].split()) + " (make help lists them)")' '$(UNKNOWN_VARS)' '$(KNOWN_VARS)'))
endif
endif

opt = $(if $($(1)),--$(2) '$($(1))')
flag = $(if $(filter-out 0 no false,$($(1))),--$(2))
comma := ,
EXTRACT_ARGS = $(call opt,DATASET,dataset) $(call opt,TASK,task) $(call opt,DATA_ROOT,data-root) \
	$(call opt,ENCODER,encoder) $(call opt,FPS,fps) $(call opt,SEGMENTS,segments) $(call opt,SAMPLING,sampling) \
	$(call opt,FRAMES_PER_SEGMENT,frames-per-segment) $(call opt,FRAME_STRIDE,frame-stride) \
	$(call opt,POOL,pool) $(call opt,BATCH,batch) \
	$(call opt,WORKERS,workers) $(call opt,CACHE_DIR,cache-dir) $(call opt,DEVICES,devices) $(call opt,NODES,nodes)
RUN_ARGS = $(call opt,DATASET,dataset) $(call opt,TASK,task) $(call opt,DATA_ROOT,data-root) \
	$(call opt,EPOCHS,epochs) $(call opt,BATCH,batch) $(call opt,LR,lr) \
	$(call opt,DEVICES,devices) $(call opt,NODES,nodes) $(call opt,ACCELERATOR,accelerator) \
	$(call opt,CACHE_DIR,cache-dir) $(call opt,WORKERS,workers) $(call opt,TAG,tag) \
	$(call opt,D_MODEL,d-model) $(call opt,N_LAYERS,n-layers) $(call opt,D_STATE,d-state) \
	$(call opt,DROPOUT,dropout) $(call opt,CLIP,clip) $(call opt,EVAL_STRIDE,eval-stride) \
	$(call flag,ALLOW_MISSING,allow-missing) $(call flag,REQUIRE_ALL,require-all)
TRAIN_ARGS = $(call opt,HEAD,head) $(call opt,SEED,seed) $(call opt,RESUME,resume) $(RUN_ARGS)
ABLATE_ARGS = $(call opt,HEADS,heads) $(call opt,SEEDS,seeds) $(call opt,NAME,name) $(RUN_ARGS)

.PHONY: help install test lint clean data extract train ablate eval predict demo bench report doctor

help: ## list targets and variables
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 20
	@echo
	@grep -E '^## ' $(MAKEFILE_LIST) | sed -E 's/^## ?//'
	@echo
	@echo "Defaults of training, the heads and ablations (python -m heads train --help lists every option):"
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) heads/config.py

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install (re-runs only when setup.cfg changes)

test: $(STAMP) ## run the test suite (offline) and the quick benchmarks
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

lint: $(STAMP) ## ruff over the code
	$(PY) -m ruff check data extract heads predict doctor bench tests

data: $(STAMP) ## write the synthetic data set (DATASET=synthetic) into DATA_ROOT
	@$(PY) -m data make $(if $(DATASET),$(DATASET),synthetic) $(call opt,DATA_ROOT,root) $(call opt,SEED,seed)

extract: $(STAMP) ## stage 1: decode + encode videos into cache/<dataset>/<tag>/
	@$(PY) -m extract $(EXTRACT_ARGS)

train: $(STAMP) ## stage 2: train a head on cached features into runs/ (TASK=all: every task in turn)
	@$(PY) -m heads train $(TRAIN_ARGS)

ablate: $(STAMP) ## every HEADS x SEEDS on one cache -> runs/ablate/<dataset>[-<task>]/<NAME>/summary.{json,md,png}
	@$(if $(HEAD)$(SEED)$(RESUME),echo "error: make ablate takes lists HEADS=a$(comma)b SEEDS=0$(comma)1 instead of HEAD= SEED=; RESUME= is not needed: a rerun resumes by itself" >&2; exit 2)
	@$(PY) -m heads ablate $(ABLATE_ARGS)

eval: $(STAMP) ## test a checkpoint: make eval CKPT=runs/.../best.ckpt
	@$(PY) -m heads eval $(call opt,CKPT,ckpt) $(call opt,CACHE_DIR,cache-dir) $(call opt,DATA_ROOT,data-root) \
		$(call flag,ALLOW_MISSING,allow-missing) $(call flag,REQUIRE_ALL,require-all)

predict: $(STAMP) ## classify new videos: make predict VIDEO=<file or folder> [CKPT=...] [OUT=predictions] [TOPK=5]
	@$(PY) -m predict $(if $(VIDEO),'$(VIDEO)') $(call opt,CKPT,ckpt) $(call opt,OUT,out) $(call opt,TOPK,topk) \
		$(call opt,CACHE_DIR,cache-dir)

demo: $(STAMP) ## offline end to end: synthetic videos -> cache -> ablation of three heads x 2 seeds (runs/demo/)
	@$(PY) -m bench.demo

bench: $(STAMP) ## efficiency figures into bench/results/latest.json (+ PNG); QUICK=1 tiny sizes; GPU=1 the CUDA section
	@$(PY) -m bench $(if $(QUICK),--quick) $(if $(GPU),--only gpu)

doctor: $(STAMP) ## one screen: torch/CUDA, devices, PyKeOps health, S4 backend per device, encoder offline, disk
	@$(PY) -m doctor $(call opt,CACHE_DIR,cache-dir) $(call opt,ENCODER,encoder)

report: $(STAMP) ## curves and confusion matrix of a run: make report RUN=runs/.../version_0
	@$(PY) -m heads report $(call opt,RUN,run)

clean: ## remove the venv, caches and build products (never cache/ or runs/)
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
