# Two commands on a fresh machine: `make run` (the pipeline) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: run test test-all venv bench clean bytecode docs

venv: $(STAMP)

# Bytecode for modelshelf's own modules, as a wheel install has: with PYTHONDONTWRITEBYTECODE
# set, every `shelf` command would otherwise compile them again (tens of ms per start).
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q src

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "modelshelf needs Python >= 3.11; set PYTHON=python3.11")'
	@echo "==> creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> installing modelshelf and its pinned dependencies (requirements.lock)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	@touch $(STAMP)

run: $(STAMP) bytecode
	@echo "==> dvc repro: prepare → train → evaluate → gate → serialise"
	$(BIN)/dvc repro
	@echo "==> the model card"
	$(BIN)/shelf show

# `make test` runs the fast suite (under 10 minutes on 2 cores); CI (CI=true, set by .ci/run
# and by every forge) and `make test-all` add the end-to-end tests marked slow.
SLOW := $(if $(filter true 1 yes,$(CI)),,-m "not slow")

test: $(STAMP) bytecode
	@echo "==> running the test suite$(if $(SLOW), (fast: CI=true or make test-all adds the slow tests))"
	$(BIN)/python -m pytest -n 2 $(SLOW) $(PYTEST_ARGS)

test-all: $(STAMP) bytecode
	@echo "==> running the whole test suite, slow end-to-end tests included"
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# The docs/ tree as a site in build/site (open build/site/index.html): strict, so a broken link
# fails; the API reference and the exit-code table are generated from the code (docs/hooks.py).
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP) bytecode
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(VENV) build
