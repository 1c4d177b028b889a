# Two set-up commands for a fresh machine (see README): `make demo` and `make test`.
# Each creates (or reuses) the virtual environment .venv and installs the pinned dependencies.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.matchlens-installed
export HF_HUB_OFFLINE := 1

.PHONY: venv demo test check bench-extract bench-quality bench-startup clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/matchlens demo demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Static checks (CI runs them before the tests): ruff (E, F, W, B), mypy (pyproject [tool.mypy]),
# and the layer contract of docs/architecture.md.
check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/mypy src/matchlens
	$(BIN)/python tools/check_architecture.py

bench-startup: $(STAMP)
	$(BIN)/python benchmarks/startup.py

bench-extract: $(STAMP)
	$(BIN)/python benchmarks/extract.py

bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf demo-out .pytest_cache
