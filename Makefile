# Two commands a new user runs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Parallel test workers; torch threads per worker are set in tests/conftest.py.
TEST_WORKERS ?= 2

.PHONY: install demo test clean

install: $(STAMP)

# constraints.txt holds the versions tested together: alone, pip's resolver gives up ("resolution-too-deep")
# between litert-torch's xdsl pin (typing_extensions < 4.13) and the newest gradio/pydantic/selenium.
# After changing dependencies: .venv/bin/pip install -e '.[all]' -c constraints.txt, run make test, then
# .venv/bin/pip freeze --exclude-editable | grep -v '^py-spy' > constraints.txt
# The core install (pip install repvit-toolkit, no extras) needs no constraints.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all]" -c constraints.txt
	touch $(STAMP)

# The main job: train a RepViT on the embedded digits, reparameterize, export, check (~2 min on 2 cores).
demo: install
	$(BIN)/repvit quickstart

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=15

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
