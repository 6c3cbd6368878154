# The two commands of the README: `make dev` runs the engine's main job, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint validate bench clean bytecode docs-screenshot

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Temporal's workflow sandbox imports the workflow module afresh for every run. Without a .pyc (the environment
# may set PYTHONDONTWRITEBYTECODE) that means compiling it from source each time: 35 -> 29 ms of worker CPU per run
# of bench/ingest.py's playbook. compileall writes only what is stale; `pip install .` (a wheel) compiles anyway.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q engine activities

dev: $(STAMP) bytecode
	$(BIN)/playbook dev

validate: $(STAMP)
	$(BIN)/playbook validate playbooks scorecards

# The tests start with the linters (ruff, mypy strict on engine/): a lint failure fails `make test` before pytest.
# pytest exits 5 when it collected no tests: that is a broken suite, not a pass.
# scripts/ensure-chromium installs Debian's chromium for the browser test when it is missing (as root).
# TEST_WORKERS processes (pytest-xdist; CI has 2 cores), each taking whole test files: every Temporal server, API and
# database a test starts is its own (free ports, temporary folders). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2
test: $(STAMP) bytecode lint
	@bash scripts/ensure-chromium
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=10 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as a failure"; exit 1; fi; exit $$rc

# ruff over the repository, mypy over engine/ (strict), activities/, api/ and worker.py (pyproject.toml says how);
# both run, and either failing fails the target
lint: $(STAMP)
	@rc=0; $(BIN)/ruff check . || rc=1; $(BIN)/mypy || rc=1; exit $$rc

# docs/inbox.png and docs/ops.png: the browser tests' screenshots of the CSM inbox and the ops page, taken again
docs-screenshot: $(STAMP)
	PLAYBOOK_UPDATE_DOCS=1 $(BIN)/python -m pytest -q tests/test_inbox_browser.py tests/test_ops_browser.py

bench: $(STAMP) bytecode
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/simulate.py
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/longrun.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/health.py

clean:
	rm -rf $(VENV) .playbook build .pytest_cache .hypothesis
