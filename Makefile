# The two commands of the README. Each one installs what it needs first.
.PHONY: setup benchmark quick scaling scaling-quick test lint typecheck

setup:
	bash scripts/setup.sh

benchmark: setup
	.venv/bin/python benchmarks/energy_vs_heuristic.py --out results/energy

quick: setup
	.venv/bin/python benchmarks/energy_vs_heuristic.py --quick --out results/energy-quick

# The scaling study: the GPT-2 family where the hub is reachable, otherwise the embedded models.
scaling: setup
	.venv/bin/python benchmarks/scaling.py --out results/scaling

scaling-quick: setup
	.venv/bin/python benchmarks/scaling.py --quick --out results/scaling-quick

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check steercontrol tests benchmarks examples

typecheck: setup
	.venv/bin/mypy steercontrol
