#!/usr/bin/env bash
# Install the core requirements (first run: about a minute) and run the lab's quickstart: on-policy
# distillation next to its off-policy control from the shipped lab models (lab/models), 3 seeds each.
# Extra arguments go to the quickstart, e.g. scripts/demo.sh --student weak --steps 200
# (each run writes into a new runs/quickstart/<date-time>).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh core
exec .venv/bin/python -m opd_jax.lab.quickstart "$@"
