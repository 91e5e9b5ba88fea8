# Circuit Casebook: `make book` builds the site, `make test` runs the offline test suite.
# Both create the virtual environment (.venv) and install everything on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_WEIGHTS ?= pretrained
STAMP := $(VENV)/.casebook-installed

.PHONY: venv book book-random check-site test bench bench-activation bench-notebooks clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@echo "[make] setting up $(VENV): the pinned packages of requirements.txt and this repository's"
	@echo "[make] helpers package (first use, or after requirements.txt/pyproject.toml changed; a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3"
	touch $(STAMP)

## Execute every chapter (papermill) and render the book into _build/html. Its first lines say
## what it will do (weights, device, chapters) and about how long; then [n/N] per chapter.
## MODEL_WEIGHTS=random forces the stand-in; without hub access it is chosen automatically.
## Unchanged chapters are reused from _build/cache; FORCE=1 re-executes all; SMOKE=1 runs
## every chapter at its small smoke size.
book: venv
	$(PY) scripts/build_book.py --weights $(MODEL_WEIGHTS) $(if $(FORCE),--force) $(if $(SMOKE),--smoke)

book-random:
	$(MAKE) book MODEL_WEIGHTS=random

## Every page of _build/html in headless Chromium (offline); screenshots in _build/screenshots.
check-site: venv
	$(PY) scripts/check_site.py

## The offline test suite (what CI runs).
test: venv
	$(PY) -m pytest

## Speed benchmark of the patching toolkit (prints its figures).
bench: venv
	$(PY) scripts/bench_path_patching.py

## Activation-patching sweeps vs TransformerLens's own sweep functions (small and medium stand-ins).
bench-activation: venv
	$(PY) scripts/bench_activation_patching.py --model gpt2-small --n-prompts 20
	$(PY) scripts/bench_activation_patching.py --model gpt2-medium --n-prompts 20 --by-pos-columns 2

## Chapter runtimes on the stand-in, smoke and default size, against their targets.
bench-notebooks: venv
	$(PY) scripts/bench_notebooks.py --full

clean:
	rm -rf _build
