# Quick start: `make test`. Every target creates .venv first if it is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cakd-installed

.PHONY: venv test test-fast sync nbtest pytest export bench gpu-check readme docs lab
.PHONY: reproduce calibrate ablation imagenet cifar100 attention results twins cluttered

$(STAMP): setup.py settings.ini
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)                      ## create .venv and install cakd with its dev tools

sync: venv                          ## fail if nbdev_export / nbdev_clean would change anything, or README.md is stale
	VENV_BIN=$(VENV)/bin tools/check-sync
	$(PY) tools/readme.py --check

nbtest: venv                        ## run every notebook (cells flagged slow/gpu are skipped)
	$(VENV)/bin/nbdev_test

PYTEST_ARGS ?= -n 2 --dist loadgroup

pytest: venv                        ## the pytest suite (two workers: most tests wait on processes they start)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test: sync nbtest pytest            ## everything CI runs

FAST_TESTS ?= tests/test_cli.py tests/test_package.py tests/test_wrappers.py tests/test_docs.py
# the notebooks that train whole runs, left to make test
FAST_SKIP ?= ^(06a_diagnostics|11_train|11b_cli)

test-fast: sync                     ## the edit loop (under 3 min on 2 cores): notebooks and tests that train nothing
	$(VENV)/bin/nbdev_test --n_workers 2 --skip_file_re '$(FAST_SKIP)'
	$(PY) -m pytest -q -n 2 -m "not slow" $(FAST_TESTS)

# The experiment notebooks, through papermill into a run folder that is created first:
#   make <experiment> [OUT=folder] [ARGS="-p name value -y '{list: [a, b]}'"]
OUT ?=
ARGS ?=
experiment = mkdir -p $(or $(OUT),$(2)) && $(VENV)/bin/papermill nbs/experiments/$(1).ipynb \
	$(or $(OUT),$(2))/$(1).ipynb -p output $(or $(OUT),$(2)) --log-output $(3) $(ARGS)

CALIBRATION ?= nbs/experiments/calibration.json

reproduce: venv                     ## the main job on CPU defaults: runs/reproduce/results.json and figures
	export CAKD_DEVICE=$${CAKD_DEVICE:-cpu}; $(call experiment,reproduce,runs/reproduce,-p calibration $(CALIBRATION))

calibrate: venv                     ## the calibrated CAKD arm's weights and tap, chosen on development seeds: $(CALIBRATION)
	export CAKD_DEVICE=$${CAKD_DEVICE:-cpu}; $(call experiment,calibrate,runs/calibrate,-p record $(CALIBRATION))

ablation: venv                      ## the calibrated CAKD with each term removed, on the runs of make reproduce
	export CAKD_DEVICE=$${CAKD_DEVICE:-cpu}; $(call experiment,ablation,runs/ablation,)

twins: venv                         ## the relational protocol (issue 29): gated teachers, positive control, every arm
	export CAKD_DEVICE=$${CAKD_DEVICE:-cpu}; $(call experiment,twins,runs/twins,)

cluttered: twins                    ## issue 29's name for it: the relational protocol was chosen over clutter

DATA ?=
imagenet: venv                      ## the ImageNet run through torchrun (CUDA, a GPU per process): make imagenet DATA=dir
	@test -n "$(DATA)" || { echo "make imagenet: pass DATA=<ImageFolder root with train/ and val/>" >&2; exit 2; }
	$(call experiment,imagenet,runs/imagenet,-p data $(DATA))

cifar100: venv                      ## CIFAR-100 on one GPU: fine-tune the teacher, then every method x 5 seeds
	$(call experiment,cifar100,runs/cifar100,-p data $(or $(DATA),data/cifar))

RUN ?= runs/reproduce/cakd_official_seed0
attention: venv                     ## teacher and student attention maps of a CAKD run: make attention RUN=runs/imagenet
	$(call experiment,attention_maps,runs/attention_maps,-p run $(RUN))

results: venv                       ## every results.json under runs/ in one table, beside the published numbers
	$(call experiment,results,runs/results,)

export: venv                        ## notebooks -> cakd/ (__all__ rewrapped to 120 columns), then clean the notebooks
	$(VENV)/bin/nbdev_export && $(PY) tools/wrap_all.py && $(VENV)/bin/nbdev_clean

readme: venv                        ## README.md from nbs/index.ipynb
	$(PY) tools/readme.py

LAB_PORT ?= 8888
LAB_ARGS ?=

lab: venv                           ## JupyterLab on the project's kernel ("cakd (.venv)")
	$(PY) -m ipykernel install --sys-prefix --name cakd --display-name "cakd (.venv)" > /dev/null
	$(VENV)/bin/jupyter lab --no-browser --port=$(LAB_PORT) $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

DOCS_OUT ?= _docs

docs: venv                          ## the docs site in $(DOCS_OUT): nbdev_docs with Quarto, else nbdev_proc_nbs + nbconvert
	$(PY) tools/docs.py --out $(DOCS_OUT)

gpu-check: venv                     ## every CUDA path, run first on a GPU: runs/gpu_check/report.md
	$(PY) bench/gpu_check.py $(ARGS)

bench: venv                         ## benchmarks, measured side by side
	$(PY) bench/gl.py
	$(PY) bench/help.py
	$(PY) bench/loader.py
