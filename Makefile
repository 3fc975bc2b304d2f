# The README's commands. `make demo`: set up and run the offline demo. `make test`: set up and test.
.PHONY: setup demo test lint bench

# pytest-xdist workers for `make test` (one torch thread each; `make test TEST_WORKERS=0` runs
# the suite in one process)
TEST_WORKERS ?= 2

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/pyro-clip demo --out runs/demo

test: setup
	.venv/bin/ruff check pyro_clip tests benchmarks scripts
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: setup
	.venv/bin/ruff check pyro_clip tests benchmarks scripts
	.venv/bin/lint-imports

# speed benchmarks + the offline suite (configs/bench/offline.yaml); resumable; writes
# benchmarks/results/*.json and benchmarks/results/RESULTS.md (see docs/benchmarks.md)
bench: setup
	.venv/bin/python -m benchmarks.run_bench --workers 2
