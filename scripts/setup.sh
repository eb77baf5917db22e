#!/usr/bin/env bash
# Create .venv and install the pinned requirements (idempotent: re-installs only when a
# requirements file changed). Usage: scripts/setup.sh [core|test]
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-core}
files=(requirements.txt)
[ "$what" = test ] && files+=(requirements-test.txt)
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.installed-$what"
sum=$(cat "${files[@]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
  args=()
  for f in "${files[@]}"; do args+=(-r "$f"); done
  # torch is pinned in requirements-test.txt and named in the same command as trl so that
  # pip never resolves a CUDA build of torch.
  .venv/bin/python -m pip install -q --disable-pip-version-check "${args[@]}" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import jax, flax, optax, orbax.checkpoint" 
  echo "$sum" > "$stamp"
fi
