#!/usr/bin/env bash
# Install (scripts/setup.sh), run the static checks (ruff, mypy), then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# static checks first (seconds): lint, format, types; configured in pyproject.toml
.venv/bin/ruff check mhe_edge tests benchmarks
.venv/bin/ruff format --check --quiet mhe_edge tests benchmarks
.venv/bin/mypy
# two workers (one per core here), each taking whole files so module fixtures are built once: 4.3 min
# against 6.5 min in one process on this 2-core machine
.venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
