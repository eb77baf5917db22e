#!/usr/bin/env bash
# Install what the tests need (first run: about a minute) and run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/objectives -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q "$@"
