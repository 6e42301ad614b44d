#!/usr/bin/env bash
# Install (scripts/setup.sh), run the static checks (ruff, mypy), then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# static checks first (seconds): lint, format, types; configured in pyproject.toml
.venv/bin/ruff check mhe_edge tests benchmarks
.venv/bin/ruff format --check --quiet mhe_edge tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
