# One command each, for a fresh machine:
#   make demo   installs into .venv/ (once) and runs the demo on the built-in corpus
#   make test   installs into .venv/ (once) and runs the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.llmfair-installed
DEMO_DIR ?= runs/demo

.PHONY: install demo test bench clean

# The stamp records the install inputs; a complete .venv with the same inputs is reused.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	# resemblyzer ships its speaker encoder; its declared webrtcvad dependency is broken (see pyproject)
	$(PY) -m pip install --quiet -c constraints.txt --no-deps resemblyzer
	cat pyproject.toml constraints.txt | sha256sum > $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/llmfair demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
