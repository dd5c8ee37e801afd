# The two commands of the README.
#   make run   set up .venv (local mode, configurable-http-proxy) and start the hub on 127.0.0.1:8000
#   make test  install the test dependencies and run the whole suite on both dependency sets

.PHONY: run test lint format

run:
	scripts/setup-system
	scripts/setup-env .venv run
	PATH="$(CURDIR)/.venv/bin:$(CURDIR)/node_modules/.bin:$$PATH" .venv/bin/jupyterhub -f jupyterhub_config.py

test:
	scripts/test

lint:
	.venv-test-latest/bin/ruff check . && .venv-test-latest/bin/ruff format --check .

format:
	.venv-test-latest/bin/ruff format . && .venv-test-latest/bin/ruff check --fix .
