"""Where our train step's time goes on this machine: XLA's kernels, by name and by kind.

Builds ``bench_model.py``'s model and train step (next-token cross-entropy, AdamW) for one config,
times ``--steps`` steps, then traces ``--trace-steps`` more with ``jax.profiler`` and sums each
kernel's time per step, naming it by its output shape and the JAX operation it came from (from
the compiled HLO's metadata). Kernels can overlap (XLA:CPU runs independent ones at once), so
the table also gives the union of their intervals.

    python benchmarks/step_profile.py --config tiny
    python benchmarks/step_profile.py --config 100m --steps 3 --trace-steps 2
    python benchmarks/step_profile.py --smoke     # seconds: tiny config, 2 x 16 tokens
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.bench_model import build, jax_fns  # noqa: E402
from benchmarks.common import CONFIGS, time_call  # noqa: E402

KINDS = [  # (kind, pattern on the kernel's name), first match wins
    ("library call (products; some reductions)", r"^(ynn_fusion|dot)"),
    ("fill with a constant", r"^wrapped_broadcast"),
    ("dynamic slice", r"dynamic-slice"),
    ("dynamic update", r"dynamic-update-slice"),
    ("copy or transpose", r"copy|transpose"),
    ("other", r""),
]


def kernel_metadata(hlo: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (output shape, op_name) for every instruction with metadata."""
    found = re.finditer(r"^\s+%(\S+) = (\S+) .*?op_name=\"([^\"]*)\"", hlo, re.M)
    return {m.group(1): (m.group(2), m.group(3)) for m in found}


def union_ms(intervals) -> float:
    """Milliseconds covered by at least one of the ``(start, end)`` intervals (microseconds)."""
    total, reached = 0.0, float("-inf")
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    return total / 1e3


def profile(config: str, batch: int, seq: int, steps: int, trace_steps: int, top: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        _, ours = build(config, work)
    params, opt_state, _, train_step = jax_fns(ours)
    rng = np.random.RandomState(0)
    tokens = jnp.asarray(rng.randint(0, CONFIGS[config]["vocab_size"], (batch, seq)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
    meta = kernel_metadata(train_step.lower(params, opt_state, tokens, positions).compile().as_text())
    state = [params, opt_state]

    def step():
        state[0], state[1], loss = train_step(state[0], state[1], tokens, positions)
        loss.block_until_ready()

    step()
    times = [time_call(step) for _ in range(steps)]
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(trace_steps):
                step()
        (path,) = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and e["name"] in meta]
    per_kernel = collections.Counter()
    for e in events:
        per_kernel[e["name"]] += e["dur"] / trace_steps / 1e3
    by_kind = collections.Counter()
    for name, ms in per_kernel.items():
        by_kind[next(kind for kind, pattern in KINDS if re.search(pattern, name))] += ms
    print(f"config {config}, batch x seq {batch}x{seq}: median step {1e3 * statistics.median(times):.1f} ms "
          f"over {steps} steps ({batch * seq / statistics.median(times):,.0f} tok/s)")
    print(f"kernels per step ({trace_steps} traced steps): {sum(per_kernel.values()):.1f} ms summed over "
          f"{len(per_kernel)} kernels, {union_ms((e['ts'], e['ts'] + e['dur']) for e in events) / trace_steps:.1f}"
          f" ms covered by at least one")
    print("\n| kind | ms per step |\n|---|---|")
    for kind, ms in by_kind.most_common():
        print(f"| {kind} | {ms:.1f} |")
    print("\n| kernel | ms per step | output | from |\n|---|---|---|---|")
    for name, ms in per_kernel.most_common(top):
        shape, op = meta[name]
        print(f"| {name} | {ms:.2f} | `{shape}` | `{op.removeprefix('jit(train_step)/')[-70:]}` |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after one to compile)")
    ap.add_argument("--trace-steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=15, help="kernels listed")
    ap.add_argument("--smoke", action="store_true", help="seconds-long run: tiny config, 2x16 batch, 2 steps")
    a = ap.parse_args(argv)
    if a.smoke:
        a.config, a.batch, a.seq, a.steps, a.trace_steps, a.top = "tiny", 2, 16, 2, 2, 3
    if min(a.batch, a.seq, a.steps, a.trace_steps) < 1 or a.seq < 2:
        ap.error("--batch, --steps and --trace-steps must be >= 1 and --seq >= 2")
    profile(a.config, a.batch, a.seq, a.steps, a.trace_steps, a.top)


if __name__ == "__main__":
    main()
