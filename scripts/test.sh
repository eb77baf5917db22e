#!/usr/bin/env bash
# Install what the tests need (first run: about a minute) and run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/objectives -x
# Two pytest workers (OPD_TEST_WORKERS; 0 = none): most of the suite's time is XLA compiling,
# one core each. Whole files go to one worker (--dist loadfile): module fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
workers=${OPD_TEST_WORKERS:-2}
par=()
[ "$workers" != 0 ] && par=(-n "$workers" --dist loadfile)
exec .venv/bin/python -m pytest -q "${par[@]}" "$@"
