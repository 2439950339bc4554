# The two commands of the README. Both run as root.
.PHONY: demo test setup bench lint

setup:
	bash scripts/setup.sh

# Set up everything on a fresh machine (idempotent, fast the second time), then trace real TLS traffic.
demo: setup
	.venv/bin/apptrace demo

# The whole test suite, eBPF tests included (they fail, never skip, if this machine cannot trace).
test: setup
	.venv/bin/python -m pytest -q --durations=30

bench: setup
	.venv/bin/python bench/run_all.py

lint:
	.venv/bin/ruff check apptrace protocols tests bench
