# Two commands do all set-up on a fresh Debian/Ubuntu machine:
#   make demo   the whole gateway running locally, with curl examples
#   make test   everything the tests need installed, then the suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench deps system-deps clean

deps: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

# The per-request path is compiled (setup.py, spoa_agent/native.py): an edit
# to one of its modules is built again, or Python would run the old one.
COMPILED := $(shell sed -n 's/^    "\(spoa_agent[a-z_.]*\)",$$/\1/p' spoa_agent/native.py | tr . / | sed 's/$$/.py/')

$(STAMP): pyproject.toml setup.py $(COMPILED)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $(STAMP)

demo: deps
	$(PY) -m spoa_agent.demo

lint: deps
	$(VENV)/bin/ruff check spoa_agent tests bench
	$(VENV)/bin/mypy

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
# The unit tests run twice: on the compiled per-request path, as shipped, and
# from its Python sources (what a host without a C compiler runs).
test: deps lint
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	SPOA_AGENT_PURE_PYTHON=1 $(PY) -m pytest -q tests/unit

# e.g. make bench BENCH_ARGS="--c-agent /opt/spoa-example/spoa" (see bench/README.md)
BENCH_ARGS ?=
bench: deps
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/fail2ban_regex.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .demo
