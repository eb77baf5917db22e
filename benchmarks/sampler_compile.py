"""Where the sampler's compile time goes: tracing, lowering and XLA's compile of the whole
sampling program, split per stage, against the number of cache phases; what each setting
costs or saves in decode speed; and the first call beyond a run, with the YNNPACK calls (XLA:CPU
fusions it hands to that library) whose runtimes are built then.

    python benchmarks/sampler_compile.py                       # tiny and 100m, batch 64, 1/2/4 phases
    python benchmarks/sampler_compile.py --configs 100m --batch 1 --phases 1,4
    python benchmarks/sampler_compile.py --phases auto --opt-levels default,1,default,1   # LLVM level
    python benchmarks/sampler_compile.py --configs tiny --phases 2,3,4 --interleave 60  # decode, paired

``--opt-levels``: XLA's ``xla_backend_optimization_level`` for each setting ("default": XLA's own;
``sample`` compiles at ``sampler.CPU_COMPILER_OPTIONS`` on CPU), repeated to alternate.

Each setting runs in this process in turn (nothing is cached between them: the in-memory caches
are cleared and the persistent compilation cache is not enabled here). Decode speed is the median
of ``--reps`` calls after the first; greedy, prompts of 16..32 tokens, 128 new tokens, as
``bench_sampler.py``.

``--interleave N``: on a noisy machine the medians of settings timed one after another differ by
more than the settings do. After the table, every setting's compiled program is called once per
round, in turn, for N rounds, and each setting's call is divided by the first setting's call of
the same round; the median of these paired ratios compares their decode.
"""

from __future__ import annotations

import argparse
import os
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
from benchmarks.common import CONFIGS, PAD, alternate, command_line, prompts, time_call  # noqa: E402


def measure(graphdef, params, name: str, batch: int, phases, reps: int, opt_level: str = "default") -> dict:
    tokens, mask = prompts(batch, 32, CONFIGS[name]["vocab_size"])
    cfg = SamplerConfig(max_new_tokens=128, temperature=0.0, pad_id=PAD, cache_phases=phases)
    jax.clear_caches()  # a repeated setting traces and compiles again
    args = (graphdef, params, tokens, mask, jax.random.key(0), np.arange(batch, dtype=np.int32),
            np.int32(128), np.float32(0.0), None, None, S.layer_ids(graphdef, params))
    t0 = time.perf_counter()
    traced = S.sample_program.trace(*args, cfg=cfg)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    options = {} if opt_level == "default" else {"xla_backend_optimization_level": int(opt_level)}
    compiled = lowered.compile(compiler_options=options)
    t3 = time.perf_counter()
    text = lowered.as_text()
    # XLA:CPU hands these fusions to YNNPACK, which builds each one's runtime on its first execution
    ynn = compiled.as_text().count('"kind":"__ynn_fusion"')
    dynamic = args[1:8] + args[9:]  # the graph definitions are static
    run = lambda: jax.block_until_ready(compiled(*dynamic))  # noqa: E731
    first = time_call(run)
    med = statistics.median(time_call(run) for _ in range(reps))
    return dict(config=name, batch=batch, phases=phases, opt_level=opt_level, trace=t1 - t0, lower=t2 - t1,
                compile=t3 - t2, first_extra=first - med, run=med, tps=batch * 128 / med, call=run,
                loops=text.count("stablehlo.while"), dots=text.count("dot_general"), ynn=ynn)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,100m")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--phases", default="1,2,4", help="comma-separated cache_phases settings (or auto)")
    parser.add_argument("--opt-levels", default="default", help="comma-separated LLVM optimization levels")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--interleave", type=int, default=0, metavar="N",
                        help="then N rounds calling every setting's program in turn: paired decode ratios")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.interleave < 0:
        parser.error(f"--reps must be at least 1 and --interleave at least 0 (got {args.reps}, {args.interleave})")
    rows = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
        with tempfile.TemporaryDirectory() as workdir:  # the checkpoint of bench_sampler.py
            graphdef, params = nnx.split(build(name, workdir)[1], nnx.Param)
        for phases in (p if p == "auto" else int(p) for p in args.phases.split(",")):
            for level in args.opt_levels.split(","):
                rows.append(measure(graphdef, params, name, args.batch, phases, args.reps, level))
    print(f"\ncommand: {command_line()}")
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), {os.cpu_count()} CPUs; greedy, float32, "
          f"batch {args.batch}, 128 new tokens; run time: median of {args.reps} calls after the first\n")
    print("| config | cache phases | LLVM opt level | trace s | lower s | XLA compile s | first call beyond a run, s "
          "| while loops | dot products | YNNPACK calls | run ms | tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['phases']} | {r['opt_level']} | {r['trace']:.2f} | {r['lower']:.2f} | "
              f"{r['compile']:.2f} | {r['first_extra']:.2f} | {r['loops']} | {r['dots']} | {r['ynn']} | "
              f"{r['run'] * 1e3:.0f} | {r['tps']:,.0f} |")
    if args.interleave:
        print_interleaved(rows, args.interleave)


def print_interleaved(rows, rounds: int):
    print(f"\nDecode, interleaved: {rounds} rounds, each calling every setting's program once in turn; "
          "ratio: the median over rounds of a setting's call over the first setting's (same config)\n")
    print("| config | cache phases | LLVM opt level | median ms | quartiles ms | ratio to the first |")
    print("|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["config"] for r in rows):
        group = [r for r in rows if r["config"] == name]
        times = list(alternate(dict(enumerate(r["call"] for r in group)), rounds).values())
        for r, seconds in zip(group, times):
            ratio = statistics.median(a / b for a, b in zip(seconds, times[0]))
            q1, _, q3 = statistics.quantiles(seconds, n=4) if rounds > 1 else (seconds[0],) * 3
            print(f"| {name} | {r['phases']} | {r['opt_level']} | {statistics.median(seconds) * 1e3:.1f} | "
                  f"{q1 * 1e3:.1f}-{q3 * 1e3:.1f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
