# Thin wrappers over tools/ and egs/. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: install test

install:
	tools/install.sh

test: install
	tools/venv/bin/python -m pytest -q tests $(PYTEST_ARGS)
