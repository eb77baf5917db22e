#!/usr/bin/env bash
# Install the core requirements (first run: about a minute) and run the end-to-end demo.
# Extra arguments go to the demo, e.g. scripts/demo.sh --steps 400 (each run: a new runs/demo/<time>)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh core
exec .venv/bin/python -m opd_jax.demo "$@"
