"""Start-up with the persistent compilation cache: a one-step run's wall time, cold (an empty
cache directory) next to warm (the cache the cold run just filled), alternating, medians.

    python benchmarks/bench_startup.py [--rounds 3] [--only tiny_opd|lab_opd]

Workloads (each a fresh process, as a user starts it; what it times is import + data + model
load + every compile + one step, i.e. start-up to the first step, plus the process exit):

- ``tiny_opd``: ``python -m opd_jax.main --config experiments/tiny_opd.py:smoke`` with
  ``run.steps=1`` (student sampling, teacher scoring, the jitted train step);
- ``lab_opd``: one lab OPD iteration from the shipped models (``opd_jax.lab.runner`` through
  ``python -m opd_jax.lab.quickstart --steps 1 --seeds 1``: both arms, and the held-out
  evaluations before and after, on 8 problems).

Each round makes a new cache directory, runs the workload cold into it, then warm from it (both
with fresh work directories). Run it on quiet cores: nothing else heavy beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKLOADS = {
    "tiny_opd": lambda work: [sys.executable, "-m", "opd_jax.main", "--config", "experiments/tiny_opd.py:smoke",
                              "--set", "run.steps=1", "--workdir", os.path.join(work, "run")],
    "lab_opd": lambda work: [sys.executable, "-m", "opd_jax.lab.quickstart", "--steps", "1", "--seeds", "1",
                             "--problems", "8", "--out", os.path.join(work, "q")],
}


def once(name: str, cache: str) -> float:
    with tempfile.TemporaryDirectory() as work:
        env = dict(os.environ, OPD_JAX_COMPILE_CACHE=cache)
        t0 = time.perf_counter()
        p = subprocess.run(WORKLOADS[name](work), cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=sorted(WORKLOADS), action="append")
    a = p.parse_args(argv)
    print(f"{'workload':<10} {'cold s':>8} {'warm s':>8} {'cold/warm':>10}   (medians of {a.rounds} alternating rounds)")
    for name in a.only or WORKLOADS:
        cold, warm = [], []
        for _ in range(a.rounds):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(once(name, cache))
                warm.append(once(name, cache))
        c, w = statistics.median(cold), statistics.median(warm)
        print(f"{name:<10} {c:8.1f} {w:8.1f} {c / w:9.2f}x   cold {[round(x, 1) for x in cold]} "
              f"warm {[round(x, 1) for x in warm]}", flush=True)


if __name__ == "__main__":
    main()
