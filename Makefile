# Quick start: `make test`. Every target creates .venv first if it is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cakd-installed

.PHONY: venv test sync nbtest pytest export bench reproduce lab docs readme

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

PYTEST_ARGS ?= -n 2

pytest: venv                        ## the pytest suite (two workers: most tests wait on processes they start)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

test: sync nbtest pytest            ## everything CI runs

REPRODUCE_OUT ?= runs/reproduce
REPRODUCE_ARGS ?=

reproduce: venv                     ## the main job on CPU defaults: runs/reproduce/results.json and figures
	@mkdir -p $(REPRODUCE_OUT)
	CAKD_DEVICE=$${CAKD_DEVICE:-cpu} $(VENV)/bin/papermill nbs/experiments/reproduce.ipynb $(REPRODUCE_OUT)/reproduce.ipynb \
		-p output $(REPRODUCE_OUT) --log-output $(REPRODUCE_ARGS)

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

bench: venv                         ## benchmarks, measured side by side
	$(PY) bench/gl.py
