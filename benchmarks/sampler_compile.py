"""Where the sampler's compile time goes: tracing, lowering and XLA's compile of the whole
sampling program, split per stage, against the number of cache phases; and what each setting
costs or saves in decode speed.

    python benchmarks/sampler_compile.py                       # tiny and 100m, batch 64, 1/2/4 phases
    python benchmarks/sampler_compile.py --configs 100m --batch 1 --phases 1,4

Each setting runs in this process in turn (nothing is cached between them: the persistent
compilation cache is not enabled here). Decode speed is the median of ``--reps`` calls after the
first; greedy, prompts of 16..32 tokens, 128 new tokens, as ``bench_sampler.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from opd_jax.sampling import SamplerConfig  # noqa: E402
from opd_jax.sampling import sampler as S  # noqa: E402
from benchmarks.bench_sampler import build  # noqa: E402
from benchmarks.common import CONFIGS, PAD, prompts, time_call  # noqa: E402


def measure(graphdef, params, name: str, batch: int, phases: int, reps: int) -> dict:
    tokens, mask = prompts(batch, 32, CONFIGS[name]["vocab_size"])
    cfg = SamplerConfig(max_new_tokens=128, temperature=0.0, pad_id=PAD, cache_phases=phases)
    args = (graphdef, params, tokens, mask, jax.random.key(0), np.arange(batch, dtype=np.int32),
            np.int32(128), np.float32(0.0), None, None, S.layer_ids(graphdef, params))
    t0 = time.perf_counter()
    traced = S.sample_program.trace(*args, cfg=cfg)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    text = lowered.as_text()
    dynamic = args[1:8] + args[9:]  # the graph definitions are static
    run = lambda: jax.block_until_ready(compiled(*dynamic))  # noqa: E731
    first = time_call(run)
    med = statistics.median(time_call(run) for _ in range(reps))
    return dict(config=name, batch=batch, phases=phases, trace=t1 - t0, lower=t2 - t1, compile=t3 - t2,
                first_extra=first - med, run=med, tps=batch * 128 / med, loops=text.count("stablehlo.while"),
                dots=text.count("dot_general"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,100m")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--phases", default="1,2,4", help="comma-separated cache_phases settings")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
        with tempfile.TemporaryDirectory() as workdir:  # the checkpoint of bench_sampler.py
            graphdef, params = nnx.split(build(name, workdir)[1], nnx.Param)
        for phases in (int(p) for p in args.phases.split(",")):
            rows.append(measure(graphdef, params, name, args.batch, phases, args.reps))
    print(f"\ncommand: python {shlex.join(sys.argv)}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), {os.cpu_count()} CPUs; greedy, float32, "
          f"batch {args.batch}, 128 new tokens; run time: median of {args.reps} calls after the first\n")
    print("| config | cache phases | trace s | lower s | XLA compile s | first call beyond a run, s "
          "| while loops | dot products | run ms | tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['phases']} | {r['trace']:.2f} | {r['lower']:.2f} | {r['compile']:.2f} | "
              f"{r['first_extra']:.2f} | {r['loops']} | {r['dots']} | {r['run'] * 1e3:.0f} | {r['tps']:,.0f} |")


if __name__ == "__main__":
    main()
