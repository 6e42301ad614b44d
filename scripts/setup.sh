#!/usr/bin/env bash
# Create .venv (if missing) and install mhe-edge with the pinned versions from constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,genai]"
